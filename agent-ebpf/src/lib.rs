#![no_std]
//! Empty library target: lets `agent` name this crate as a build-dependency so that cargo rebuilds it when the programs change.
