//! Scopes a process belongs to, from its cgroup path: systemd unit ([`crate::procfs::systemd_unit`])
//! and container (docker, containerd, CRI-O, podman, Kubernetes pods). Pure.

use crate::api::Container;

/// The container a cgroup path shows, if any: the innermost 64-hex-digit id and its runtime,
/// and the pod uid when the path is under `kubepods`.
pub fn container_of(cgroup: &str) -> Option<Container> {
    let parts: Vec<&str> = cgroup.split('/').filter(|p| !p.is_empty()).collect();
    let (id, runtime) = parts.iter().rev().find_map(|p| container_id(p))?;
    let kube = parts.iter().any(|p| p.starts_with("kubepods"));
    let pod = parts.iter().rev().find_map(|p| pod_uid(p));
    Some(Container {
        id: id.to_string(),
        runtime: if kube && runtime == "docker" { "kubepods".into() } else { runtime.into() },
        pod,
    })
}

/// `docker-<id>.scope`, `cri-containerd-<id>.scope`, `crio-<id>.scope`, `libpod-<id>.scope`,
/// or a bare `<id>` (cgroupfs driver: `/docker/<id>`, `/kubepods/.../<id>`).
fn container_id(part: &str) -> Option<(&str, &'static str)> {
    let base = part.strip_suffix(".scope").unwrap_or(part);
    for (prefix, runtime) in
        [("docker-", "docker"), ("cri-containerd-", "containerd"), ("crio-", "crio"), ("libpod-", "podman")]
    {
        if let Some(id) = base.strip_prefix(prefix)
            && is_id(id)
        {
            return Some((id, runtime));
        }
    }
    is_id(base).then_some((base, "docker"))
}

fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `kubepods-burstable-pod<uid>.slice` (systemd driver: `_` for `-` in the uid) or `pod<uid>`.
fn pod_uid(part: &str) -> Option<String> {
    let base = part.strip_suffix(".slice").unwrap_or(part);
    let uid = base.rsplit_once("-pod").map(|(_, u)| u).or_else(|| base.strip_prefix("pod"))?;
    let uid = uid.replace('_', "-");
    (uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')).then_some(uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4b1c6a9e0d2b7c8a5f1e3d6c9b0a7e4d2c1b8a9f0e3d6c5b4a7f8e9d0c1b2a";

    #[test]
    fn runtimes_and_pods() {
        let c = container_of(&format!("/system.slice/docker-{ID}.scope")).unwrap();
        assert_eq!((c.id.as_str(), c.runtime.as_str(), c.pod), (ID, "docker", None));
        let c = container_of(&format!("/docker/{ID}")).unwrap();
        assert_eq!(c.runtime, "docker");
        let c = container_of(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0a1b2c3d_4e5f_6a7b_8c9d_0e1f2a3b4c5d.slice/cri-containerd-{ID}.scope"
        ))
        .unwrap();
        assert_eq!(c.runtime, "containerd");
        assert_eq!(c.pod.as_deref(), Some("0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d"));
        let c = container_of(&format!("/kubepods/besteffort/pod0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d/{ID}"))
            .unwrap();
        assert_eq!((c.runtime.as_str(), c.pod.is_some()), ("kubepods", true));
        assert_eq!(container_of(&format!("/machine.slice/libpod-{ID}.scope")).unwrap().runtime, "podman");
        assert_eq!(container_of(&format!("/system.slice/crio-{ID}.scope")).unwrap().runtime, "crio");
    }

    #[test]
    fn not_containers() {
        assert_eq!(container_of("/system.slice/nginx.service"), None);
        assert_eq!(container_of("/user.slice/user-1000.slice/session-3.scope"), None);
        assert_eq!(container_of("/docker-short.scope"), None);
        assert_eq!(container_of("/"), None);
    }
}
