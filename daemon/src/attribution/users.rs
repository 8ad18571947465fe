//! uid to user name, through NSS, remembered.

use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct UserNames {
    cache: HashMap<u32, Option<String>>,
}

/// More distinct uids than this means a uid-per-process workload (user
/// namespaces): stop remembering rather than grow without bound.
const MAX_CACHED: usize = 4096;

impl UserNames {
    pub fn name(&mut self, uid: u32) -> Option<String> {
        if let Some(n) = self.cache.get(&uid) {
            return n.clone();
        }
        let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name);
        if self.cache.len() >= MAX_CACHED {
            self.cache.clear();
        }
        self.cache.insert(uid, name.clone());
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_root() {
        let mut u = UserNames::default();
        assert_eq!(u.name(0).as_deref(), Some("root"));
        assert_eq!(u.name(0).as_deref(), Some("root"));
        assert_eq!(u.name(4_000_000_000), None);
    }
}
