//! The installation's slot groups (see [`Layout`]): how many is stored in
//! the home group (`<prefix>layout`), written once by the first server that
//! asks for more than one, and read by every server and agent. It is fixed
//! from then on: group prefixes (and so every run's keys) depend on it. No
//! key means one group: an installation from before slot groups, whose
//! runs all live under the prefix itself, which stays group 0's.

use super::*;

impl Store {
    /// Agree the layout with Redis: `wanted` (the `--slot-groups` flag, if
    /// given) is stored if none is; otherwise it must match what is. Then
    /// this store uses the stored layout. Returns the number of groups.
    pub async fn settle_layout(&self, wanted: Option<u32>) -> Result<u32> {
        let key = self.keys().layout();
        let mut c = self.conn();
        if let Some(w) = wanted.filter(|&w| w > 1) {
            let _: Option<String> = self
                .timed(
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(w)
                        .arg("NX")
                        .query_async(&mut c),
                )
                .await?;
        }
        let stored: Option<String> = self
            .timed(redis::cmd("GET").arg(&key).query_async(&mut c))
            .await?;
        let groups = match stored.as_deref().map(str::parse::<u32>) {
            None => 1,
            Some(Ok(n)) if (1..=ttg_proto::keys::MAX_GROUPS).contains(&n) => n,
            Some(_) => {
                return Err(Error::Startup(format!(
                    "{key} holds {stored:?}, not a number of slot groups in 1..={}",
                    ttg_proto::keys::MAX_GROUPS
                )))
            }
        };
        if let Some(w) = wanted.filter(|&w| w != groups) {
            return Err(Error::Startup(format!(
                "--slot-groups {w}: this installation has {groups} (fixed once there is more than one: its runs' keys depend on it); start with --slot-groups {groups} or without the flag"
            )));
        }
        let layout = Arc::new(Layout::new(self.home.prefix(), groups));
        if let Ok(mut l) = self.layout.write() {
            *l = layout;
        }
        Ok(groups)
    }
}
