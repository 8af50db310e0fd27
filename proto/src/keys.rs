//! Redis key names. Every key lives under one prefix (default `ttg:`) so two
//! installations, or two tests, can share one Redis.

/// Consumer group every agent reads the tasks streams through.
pub const GROUP: &str = "agents";

/// Key builder for one prefix.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (e.g. `"ttg:"`).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix itself.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Tasks stream of one kernel: agents read only the streams of kernels they offer.
    pub fn tasks(&self, kernel: &str) -> String {
        format!("{}tasks:{kernel}", self.prefix)
    }

    /// Scheduler zset of one kernel: the runs with chunks to hand out,
    /// scored by class, then agent time used per unit of weight (see
    /// prelude.lua and claim.lua).
    pub fn sched(&self, kernel: &str) -> String {
        format!("{}sched:{kernel}", self.prefix)
    }

    /// The scheduler's tick: chunks handed out so far, installation-wide
    /// (every 20th goes to the lowest class with work).
    pub fn sched_ticks(&self) -> String {
        format!("{}sched:ticks", self.prefix)
    }

    /// Wake stream of one kernel: an entry each time a run of it becomes
    /// claimable (submitted, a chunk re-queued, back under its cap); idle
    /// agents block on it with XREAD.
    pub fn wake(&self, kernel: &str) -> String {
        format!("{}wake:{kernel}", self.prefix)
    }

    /// List of a run's re-queued chunks (`chunk:attempt:enqueued_ms`),
    /// handed out before its fresh ones; reclaimed chunks go to the front.
    pub fn run_queue(&self, run_id: &str) -> String {
        format!("{}run:{run_id}:queue", self.prefix)
    }

    /// Run hash: `spec` (protobuf RunSpec) plus counters the scripts update.
    pub fn run(&self, run_id: &str) -> String {
        format!("{}run:{run_id}", self.prefix)
    }

    /// Bitmap with one bit per chunk: set once the chunk's result is stored.
    pub fn done(&self, run_id: &str) -> String {
        format!("{}run:{run_id}:done", self.prefix)
    }

    /// Bitmap with one bit per chunk: set while the chunk is dead-lettered.
    pub fn dead_bits(&self, run_id: &str) -> String {
        format!("{}run:{run_id}:deadbits", self.prefix)
    }

    /// Dead-letter stream of a run: `c` chunk, `a` attempt, `err` last error,
    /// `t` the task record (so `retry` can re-queue it).
    pub fn dead_letters(&self, run_id: &str) -> String {
        format!("{}run:{run_id}:dead", self.prefix)
    }

    /// Hash chunk index → packed little-endian f64 values of the chunk.
    pub fn results(&self, run_id: &str) -> String {
        format!("{}run:{run_id}:results", self.prefix)
    }

    /// String: every counted chunk's extremes, little-endian f64 pairs
    /// (min, max): output k's block of `total_chunks` pairs, then the next
    /// output's (see complete.lua). Best reads one block to know which
    /// chunks can hold the best points.
    pub fn extremes(&self, run_id: &str) -> String {
        format!("{}run:{run_id}:ext", self.prefix)
    }

    /// Stream of the run's events (field `e`: protobuf Event).
    pub fn events(&self, run_id: &str) -> String {
        format!("{}run:{run_id}:events", self.prefix)
    }

    /// Sorted set of run ids scored by submit time.
    pub fn runs(&self) -> String {
        format!("{}runs", self.prefix)
    }

    /// Sorted set of agent ids scored by lease expiry (ms since epoch).
    pub fn agents(&self) -> String {
        format!("{}agents", self.prefix)
    }

    /// Hash of installation-wide counters the scripts keep (`completed`,
    /// `duplicates`, `failed`, `reclaimed`, `dead`), exported by every server
    /// as Prometheus counters.
    pub fn stats(&self) -> String {
        format!("{}stats", self.prefix)
    }

    /// Stream of task entries that could not be decoded (corrupt or foreign
    /// writes): `stream`, `entry`, `err`, and the raw `t` field. They are
    /// moved here, never retried, so a bad entry cannot wedge a consumer.
    pub fn corrupt_entries(&self) -> String {
        format!("{}corrupt", self.prefix)
    }

    /// Pub/sub channel on which replicas tell each other of cancelled runs, so
    /// every replica pushes CancelRun to the agents it holds.
    pub fn control_channel(&self) -> String {
        format!("{}control", self.prefix)
    }

    /// Sorted set of finished run ids scored by the time their data expires
    /// (ms since epoch); the server's janitor removes runs that are due.
    pub fn expiring(&self) -> String {
        format!("{}expiring", self.prefix)
    }

    /// Sorted set of tombstones `<run id>:expired` / `<run id>:deleted` scored
    /// by removal time, so a removed run answers "expired" rather than "not
    /// found". Trimmed by age and count: it stays small.
    pub fn gone(&self) -> String {
        format!("{}gone", self.prefix)
    }

    /// String: the installation's number of slot groups (see [`Layout`]),
    /// set by the first server; kept in the home group.
    pub fn layout(&self) -> String {
        format!("{}layout", self.prefix)
    }

    /// KEYS of the completion script, in its order.
    pub fn complete_keys(&self, run_id: &str, tasks_stream: &str) -> [String; 9] {
        [
            self.run(run_id),
            self.done(run_id),
            self.results(run_id),
            self.events(run_id),
            tasks_stream.to_string(),
            self.dead_bits(run_id),
            self.stats(),
            self.expiring(),
            self.extremes(run_id),
        ]
    }

    /// KEYS of the failure and reclaim scripts, in their order.
    pub fn fail_keys(&self, run_id: &str, tasks_stream: &str) -> [String; 9] {
        [
            self.run(run_id),
            self.done(run_id),
            self.dead_bits(run_id),
            self.dead_letters(run_id),
            self.events(run_id),
            tasks_stream.to_string(),
            self.stats(),
            self.expiring(),
            self.results(run_id),
        ]
    }

    /// KEYS of the purge script, in its order: every key a run owns, then the
    /// indexes it is listed in.
    pub fn purge_keys(&self, run_id: &str) -> [String; 11] {
        [
            self.run(run_id),
            self.done(run_id),
            self.dead_bits(run_id),
            self.dead_letters(run_id),
            self.results(run_id),
            self.events(run_id),
            self.extremes(run_id),
            self.runs(),
            self.expiring(),
            self.gone(),
            self.run_queue(run_id),
        ]
    }

    /// String: protobuf AgentInfo of one agent (its last heartbeat).
    pub fn agent(&self, agent_id: &str) -> String {
        format!("{}agent:{agent_id}", self.prefix)
    }

    /// Digest of the instance secret of the process that owns a live agent
    /// id; it expires [`OWNER_LEASES`] leases after its last renewal.
    pub fn agent_owner(&self, agent_id: &str) -> String {
        format!("{}agent-owner:{agent_id}", self.prefix)
    }
}

/// Most slot groups an installation may have.
pub const MAX_GROUPS: u32 = 64;

/// Redis Cluster's slots.
const SLOTS: u32 = 16_384;

/// An installation's keys over its slot groups. Each group is a whole
/// key space of its own (runs, their scheduler zsets, tasks and wake
/// streams, stats, retention and tombstone indexes) under one prefix, so on
/// a Redis Cluster it lives in one hash slot and every script and MULTI
/// stays in one slot: a run lives in one group, and the groups spread the
/// installation over the cluster's primaries. Group 0, the *home* group,
/// has the installation's prefix itself and also holds what is not a run's:
/// the agent registry and the layout. With one group (the default) the
/// layout is exactly the one-prefix layout.
///
/// Group g > 0's prefix: on a hash-tagged prefix (`{ttg}:`, a cluster) the
/// tag gets a suffix (`{ttg.g1.k}:`) chosen so that group g's slot lies mid
/// in the g-th arc after the home slot's of `groups` equal arcs of the slot
/// ring: with as many groups as the primaries of an evenly split cluster,
/// each primary holds one. Without a tag (one node) it
/// is `ttg:g1:`. The number of groups is fixed when an installation first
/// uses more than one (it decides the prefixes); a run's group is part of
/// its id (see [`run_group`]).
#[derive(Clone, Debug)]
pub struct Layout {
    groups: Vec<Keys>,
}

impl Layout {
    /// `groups` (1..=[`MAX_GROUPS`], clamped) groups of `prefix`.
    pub fn new(prefix: &str, groups: u32) -> Self {
        let n = groups.clamp(1, MAX_GROUPS);
        let groups = (0..n)
            .map(|g| Keys::new(group_prefix(prefix, g, n)))
            .collect();
        Self { groups }
    }

    /// The home group: the installation's own prefix.
    pub fn home(&self) -> &Keys {
        &self.groups[0]
    }

    /// Every group, home first.
    pub fn groups(&self) -> &[Keys] {
        &self.groups
    }

    /// How many groups.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// Whether there is one group only (the one-prefix layout).
    pub fn is_single(&self) -> bool {
        self.groups.len() == 1
    }

    /// Always false: there is at least the home group.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The group a key of this installation (a tasks stream, say) is in:
    /// the group with the longest prefix of it (home for anything else).
    pub fn of_key(&self, key: &str) -> &Keys {
        self.groups
            .iter()
            .filter(|k| key.starts_with(k.prefix()))
            .max_by_key(|k| k.prefix().len())
            .unwrap_or(&self.groups[0])
    }

    /// The keys of `run_id`'s group; None when its id names a group this
    /// layout does not have.
    pub fn of_run(&self, run_id: &str) -> Option<&Keys> {
        self.groups.get(run_group(run_id) as usize)
    }
}

fn group_prefix(prefix: &str, g: u32, n: u32) -> String {
    if g == 0 {
        return prefix.to_string();
    }
    let Some(tag) = hash_tag(prefix) else {
        return format!("{prefix}g{g}:");
    };
    let open = prefix.find('{').unwrap_or(0);
    let close = open + 1 + tag.len();
    let with = |t: &str| format!("{}{{{t}}}{}", &prefix[..open], &prefix[close + 1..]);
    // Group g's slot lies in the middle half of the arc g places after the
    // home slot's, of `n` equal arcs of the slot ring: on a cluster of `n`
    // primaries whose slots are split evenly (as `redis-cli --cluster
    // create` does), each primary holds one group.
    let arc = SLOTS / n;
    let a = ((slot(tag) / arc).min(n - 1) + g) % n;
    let (from, to) = (a * arc + arc / 4, a * arc + 3 * arc / 4);
    (0u32..)
        .map(|k| format!("{tag}.g{g}.{k}"))
        .find(|t| (from..to).contains(&slot(t)))
        .map(|t| with(&t))
        .unwrap_or_else(|| with(&format!("{tag}.g{g}")))
}

/// The Redis Cluster slot of a hash tag (CRC16/XMODEM mod 16384).
pub fn slot(tag: &str) -> u32 {
    u32::from(crc16::State::<crc16::XMODEM>::calculate(tag.as_bytes())) % SLOTS
}

/// The slot group a run id names: its `-<g>` suffix (ids of runs in group
/// 0, and of every run of a one-group installation, have none).
pub fn run_group(run_id: &str) -> u32 {
    let mut parts = run_id.splitn(3, '-');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(_), Some(g)) => g.parse().unwrap_or(u32::MAX),
        _ => 0,
    }
}

/// The hash tag of a key or prefix as Redis Cluster reads it: what lies
/// between the first `{` and the next `}`, when that is not empty. Keys with
/// the same tag share a slot.
pub fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let rest = &key[open + 1..];
    let close = rest.find('}')?;
    (close > 0).then(|| &rest[..close])
}

/// A new run id: 10 base-36 characters of milliseconds (time-sortable for the
/// next century) and 6 random ones.
pub fn new_run_id(now_ms: i64, random: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::with_capacity(17);
    let mut t = now_ms.max(0) as u64;
    let mut head = [b'0'; 10];
    for slot in head.iter_mut().rev() {
        *slot = DIGITS[(t % 36) as usize];
        t /= 36;
    }
    out.extend_from_slice(&head);
    out.push(b'-');
    let mut r = random;
    for _ in 0..6 {
        out.push(DIGITS[(r % 36) as usize]);
        r /= 36;
    }
    String::from_utf8(out).unwrap_or_default()
}

/// A new run id in slot group `group`: [`new_run_id`], then `-<group>`
/// unless the group is the home group.
pub fn new_run_id_in(now_ms: i64, random: u64, group: u32) -> String {
    let id = new_run_id(now_ms, random);
    if group == 0 {
        id
    } else {
        format!("{id}-{group}")
    }
}

/// Submit time (ms since epoch) encoded in a run id's first 10 characters,
/// which is also its score in the runs index; None if `s` is not such an id.
pub fn run_id_ms(s: &str) -> Option<i64> {
    let head = s.as_bytes().get(..10)?;
    let mut t: i64 = 0;
    for b in head {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'z' => b - b'a' + 10,
            _ => return None,
        };
        t = t.checked_mul(36)?.checked_add(i64::from(d))?;
    }
    Some(t)
}

/// An agent's record and the ownership of its id outlive the last renewal
/// by this many leases: long enough for a reaper to read which streams a
/// dead agent read, short enough that a ghost does not linger. Both the
/// server (at every heartbeat) and the agent itself (at every lease refresh,
/// so a server outage does not lapse it) renew the ownership.
pub const OWNER_LEASES: u32 = 20;

/// Whether `s` looks like a run id (guards key construction against odd input).
pub fn valid_run_id(s: &str) -> bool {
    valid_id(s)
}

/// Whether `s` can be an agent id: it names a consumer and a key, so the
/// same rule as run ids (1..=64 letters, digits and '-').
pub fn valid_agent_id(s: &str) -> bool {
    valid_id(s)
}

fn valid_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_sort_by_time() {
        let a = new_run_id(1_700_000_000_000, 5);
        let b = new_run_id(1_700_000_000_001, 0);
        assert!(a < b, "{a} < {b}");
        assert_eq!(run_id_ms(&a), Some(1_700_000_000_000));
        assert_eq!(run_id_ms("short"), None);
        assert_eq!(run_id_ms("ABCDEFGHIJ-x"), None);
        assert_eq!(a.len(), 17);
        assert!(valid_run_id(&a));
        assert!(!valid_run_id("a b"));
        assert!(!valid_run_id(""));
    }

    #[test]
    fn one_group_is_the_one_prefix_layout() {
        let l = Layout::new("ttg:", 1);
        assert_eq!(l.len(), 1);
        assert_eq!(l.home().prefix(), "ttg:");
        let id = new_run_id_in(1_700_000_000_000, 7, 0);
        assert_eq!(id, new_run_id(1_700_000_000_000, 7));
        assert_eq!(l.of_run(&id).map(Keys::prefix), Some("ttg:"));
    }

    #[test]
    fn a_run_id_names_its_group() {
        let l = Layout::new("ttg:", 4);
        let prefixes: Vec<&str> = l.groups().iter().map(Keys::prefix).collect();
        assert_eq!(prefixes, ["ttg:", "ttg:g1:", "ttg:g2:", "ttg:g3:"]);
        for g in 0..4 {
            let id = new_run_id_in(1_700_000_000_000, 7, g);
            assert!(valid_run_id(&id), "{id}");
            assert_eq!(run_group(&id), g);
            assert_eq!(run_id_ms(&id), Some(1_700_000_000_000));
            assert_eq!(l.of_run(&id).map(Keys::prefix), Some(prefixes[g as usize]));
        }
        assert!(
            l.of_run("0000000001-abcdef-9").is_none(),
            "a group it does not have"
        );
        assert_eq!(l.of_key("ttg:g2:tasks:placeholder").prefix(), "ttg:g2:");
        assert_eq!(l.of_key("ttg:tasks:placeholder").prefix(), "ttg:");
        assert_eq!(l.of_key("other").prefix(), "ttg:");
        assert!(l.of_run("0000000001-abcdef-x").is_none());
        assert_eq!(Layout::new("ttg:", 0).len(), 1);
        assert_eq!(Layout::new("ttg:", 1_000).len(), MAX_GROUPS as usize);
    }

    #[test]
    fn cluster_groups_spread_evenly_over_the_slot_ring() {
        // Redis's own: CLUSTER KEYSLOT foo = 12182, bar = 5061.
        assert_eq!((slot("foo"), slot("bar")), (12_182, 5_061));
        // On a cluster split evenly over 3 primaries, 3 and 6 groups put
        // as many on each; every group has a tag of its own.
        for n in [3u32, 6] {
            let l = Layout::new("{ttg}:", n);
            let arc = SLOTS / n;
            let home = slot("ttg") / arc;
            let mut per_third = [0; 3];
            let mut tags = std::collections::HashSet::new();
            for (g, k) in l.groups().iter().enumerate() {
                let tag = hash_tag(k.prefix()).expect("tagged");
                assert!(tags.insert(tag.to_string()), "{tag} twice");
                if g > 0 {
                    let at = slot(tag);
                    assert_eq!(at / arc, (home + g as u32) % n, "group {g} of {n}: {tag}");
                    assert!(
                        (arc / 4..3 * arc / 4).contains(&(at % arc)),
                        "mid-arc: {at}"
                    );
                }
                assert!(k.prefix().ends_with("}:"));
                per_third[(slot(tag) * 3 / SLOTS) as usize] += 1;
            }
            assert_eq!(per_third, [n / 3; 3], "{n} groups");
        }
        // A tag with text around it keeps the text.
        let l = Layout::new("a{ttg}b:", 2);
        assert!(
            l.groups()[1].prefix().starts_with("a{ttg.g1."),
            "{}",
            l.groups()[1].prefix()
        );
        assert!(l.groups()[1].prefix().ends_with("}b:"));
    }

    #[test]
    fn hash_tags_follow_redis_cluster() {
        assert_eq!(hash_tag("{ttg}:run:x"), Some("ttg"));
        assert_eq!(hash_tag("ttg:run:x"), None);
        assert_eq!(
            hash_tag("{}:a{b}"),
            None,
            "an empty first tag means the whole key"
        );
        assert_eq!(hash_tag("a{b}{c}"), Some("b"));
        assert_eq!(hash_tag("a{b"), None);
    }

    #[test]
    fn under_a_tagged_prefix_every_script_key_shares_one_tag() {
        let k = Keys::new("{ttg}:");
        let run = "0000000001-abcdef";
        let mut all: Vec<String> = Vec::new();
        all.extend(k.complete_keys(run, &k.tasks("placeholder")));
        all.extend(k.fail_keys(run, &k.tasks("exec")));
        all.extend(k.purge_keys(run));
        all.extend([
            k.sched("placeholder"),
            k.sched_ticks(),
            k.wake("placeholder"),
            k.run_queue(run),
            k.agent("a-1"),
            k.agent_owner("a-1"),
            k.agents(),
            k.corrupt_entries(),
            k.control_channel(),
        ]);
        for key in &all {
            assert_eq!(hash_tag(key), Some("ttg"), "{key}");
        }
    }
}
