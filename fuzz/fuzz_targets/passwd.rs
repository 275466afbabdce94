//! `/etc/passwd`, read once for the user names of the per-user roll-ups (`Users` in
//! `agent/src/procfs.rs`). Input: the file's bytes.
#![no_main]

use std::collections::HashMap;

use carbon_agent::procfs::Users;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // `Users::load` reads the file as UTF-8; anything else gives no names.
    let Ok(text) = std::str::from_utf8(data) else { return };
    let users = Users::parse(text);
    // getpwuid(3): the first well-formed line with a name for a uid names it.
    let mut first: HashMap<u32, &str> = HashMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if let (Some(name), Some(Ok(uid))) = (fields.first(), fields.get(2).map(|u| u.parse::<u32>()))
            && !name.is_empty()
        {
            first.entry(uid).or_insert(name);
        }
    }
    for (uid, name) in &first {
        assert_eq!(users.name(*uid), *name, "uid {uid}");
    }
    for uid in [0, 1, 1000, 65534, u32::MAX] {
        let name = users.name(uid);
        assert!(!name.is_empty());
        if !first.contains_key(&uid) {
            assert_eq!(name, if uid == u32::MAX { "?".to_owned() } else { uid.to_string() });
        }
    }
});
