/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The one definition of everything the kernel side and connectracerd share:
 * event records, map keys and values, counters. Rust sees these through the
 * skeleton's generated `types::` module; nothing here is mirrored by hand.
 */
#ifndef __CONNECTRACER_H
#define __CONNECTRACER_H

#define CT_COMM_LEN 16
#define CT_PATH_LEN 256
#define CT_ARGS_LEN 256
/* Port rules one LPM entry can carry, own and inherited from shorter prefixes. */
#define CT_MAX_PORT_RULES 16

/*
 * Capacities of the maps a configuration is written to. The daemon checks
 * every configuration against them before its first kernel write (and
 * --check-config does too), so an apply never fails halfway for lack of room.
 */
enum ct_capacity {
	CT_WATCH_ENTRIES = 65536,	/* per family; one trie per generation */
	CT_POLICY_ENTRIES = 131072,	/* per family; both generations share the trie */
	CT_SCOPE_ENTRIES = 131072,	/* both generations share the map */
};

enum ct_event_kind {
	CT_EV_CONNECT = 1,	/* connect4/6: TCP, or UDP connect() */
	CT_EV_SENDMSG = 2,	/* first datagram from one socket to one destination */
	CT_EV_ESTABLISHED = 3,	/* TCP SYN_SENT -> ESTABLISHED */
	CT_EV_FAILED = 4,	/* TCP SYN_SENT -> CLOSE, or released before connecting */
	CT_EV_CLOSED = 5,	/* TCP -> CLOSE after established, or UDP socket released */
	CT_EV_EXEC = 6,
	CT_EV_FORK = 7,
	CT_EV_EXIT = 8,
	CT_EV_DNS = 9,		/* a DNS answer to a query the socket sent */
};

enum ct_verdict {
	CT_VERDICT_ALLOW = 0,
	CT_VERDICT_AUDIT = 1,	/* would be denied; audit mode lets it through */
	CT_VERDICT_DENY = 2,
};

/* Indexes of the per-CPU `stats` array. */
enum ct_stat {
	CT_STAT_CONNECTS = 0,	/* connect4/6 calls for TCP and UDP */
	CT_STAT_SENDMSG_NEW,	/* sendmsg to a (socket, destination) not seen before */
	CT_STAT_SENDMSG_DUP,	/* sendmsg suppressed by the dedup map */
	CT_STAT_UNWATCHED,	/* connections counted but not traced (trace = "watched") */
	CT_STAT_EVENTS,		/* records submitted to the ring buffer */
	CT_STAT_RB_DROPS,	/* bpf_ringbuf_reserve failures: events lost */
	CT_STAT_STATE_CHANGES,	/* TCP state changes of traced sockets */
	CT_STAT_PROC_EVENTS,	/* exec/fork/exit records attempted (submitted or dropped) */
	CT_STAT_OTHER_PROTO,	/* connect4/6 on neither TCP nor UDP (ping sockets, ...) */
	CT_STAT_DENIED,		/* connect/sendmsg calls refused by policy (EPERM) */
	CT_STAT_WOULD_DENY,	/* calls policy would refuse, let through in audit mode */
	CT_STAT__MAX,
};

enum ct_proto {
	CT_PROTO_TCP = 6,
	CT_PROTO_UDP = 17,
};

struct ct_conn_event {
	__u32 kind;		/* enum ct_event_kind */
	__u32 pid;		/* tgid; 0 on state events (they may run in softirq) */
	__u32 tid;
	__u32 uid;
	__u32 gid;
	__u16 family;		/* AF_INET or AF_INET6; v4-mapped v6 is folded to AF_INET */
	__u8 protocol;		/* enum ct_proto */
	__u8 verdict;		/* enum ct_verdict */
	__u64 ts_ns;		/* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 cookie;		/* socket cookie: the join key across hooks */
	__u64 cgroup_id;	/* cgroup v2 inode of the caller; 0 on state events */
	__u64 netns_cookie;
	__u8 daddr[16];		/* network order; IPv4 in the first 4 bytes */
	__u8 saddr[16];
	__u16 dport;		/* host order */
	__u16 sport;
	__u32 host_id;		/* watch-list entry the destination matched, 0 if none */
	__u32 policy_rule;	/* policy entry that gave the verdict, 0 if none */
	__s32 error;		/* sk_err on CT_EV_FAILED (ECONNREFUSED, ETIMEDOUT, ...) */
	__u64 duration_ns;	/* CT_EV_FAILED / CT_EV_CLOSED: since connect */
	__u64 bytes_sent;	/* TCP payload bytes, retransmissions excluded */
	__u64 bytes_received;	/* TCP payload bytes, the FIN excluded */
	__u8 old_state;
	__u8 new_state;
	__u16 pad;
	__u32 epoch;		/* configuration generation the connect was judged against */
	char comm[CT_COMM_LEN];
};

struct ct_proc_event {
	__u32 kind;		/* CT_EV_EXEC, CT_EV_FORK or CT_EV_EXIT */
	__u32 pid;
	__u32 ppid;
	__u32 uid;
	__u32 gid;
	__u32 args_len;		/* bytes of NUL-separated argv in args */
	__u32 args_total;	/* bytes of the whole argv: more than args_len when cut */
	__u64 ts_ns;
	__u64 start_ns;		/* task start time, ns since boot */
	__u64 cgroup_id;
	__s32 exit_code;
	__u32 filename_len;
	char comm[CT_COMM_LEN];
	char filename[CT_PATH_LEN];	/* path handed to execve */
	char args[CT_ARGS_LEN];
};

/* LPM trie keys: prefixlen in host order, then the address in network order. */
struct ct_lpm_v4_key {
	__u32 prefixlen;
	__u8 addr[4];
};

struct ct_lpm_v6_key {
	__u32 prefixlen;
	__u8 addr[16];
};

/* lo = 0, hi = 65535 matches every port. */
struct ct_port_rule {
	__u16 lo;
	__u16 hi;
	__u32 host_id;
};

/*
 * The LPM trie returns only the longest matching prefix, so userspace copies
 * the rules of every shorter covering prefix into each entry, most specific
 * first: the first rule whose port range matches decides.
 */
struct ct_watch_val {
	__u32 nrules;
	__u32 pad;
	struct ct_port_rule rules[CT_MAX_PORT_RULES];
};

/*
 * What a reload changes is double-buffered: two generations of this and of
 * the watch tries, and `active` names the one in force. connectracerd fills
 * the idle generation, then flips `active` in one write, so no connection
 * is ever judged against a half-applied configuration.
 */
struct ct_config {
	__u32 epoch;		/* increases with every applied configuration */
	__u8 trace_all;
	__u8 policy;		/* CT_POLICY_* flags: which lookups a connect needs */
	__u8 pad[2];
};

enum ct_policy_flag {
	CT_POLICY_ON = 1,	/* any rule, default or blocking in force */
	CT_POLICY_CGROUP = 2,	/* some scope selects by cgroup */
	CT_POLICY_UID = 4,	/* some scope selects by user */
	CT_POLICY_EXE = 8,	/* some scope selects by executable */
	CT_POLICY_NAMES = 16,	/* some rule names a hostname: answers seen in the kernel count */
	CT_POLICY_SANDBOX = 32,	/* some sandbox (tracectl run) is in force */
};

/*
 * Egress policy. Every selector a rule or scope names (a unit glob, a
 * cgroup, a container, a user, an executable) becomes a numbered scope;
 * userspace maps the kernel-visible identities that select it (cgroup ids,
 * uids, executable inodes) to that number, and each scope's destination
 * rules live in one LPM trie per family, keyed by scope then address. A
 * connect therefore costs one trie lookup per scope that applies to the
 * caller, whatever the number of rules.
 */
enum ct_scope_id {
	CT_SCOPE_BUILTIN = 1,	/* the lock-out exceptions: loopback, DNS servers */
	CT_SCOPE_GLOBAL = 2,	/* rules and defaults without a selector */
};

#define CT_MAX_CGROUP_DEPTH 16	/* cgroup ancestors looked at, deepest first */

enum ct_scope_kind {
	CT_SCOPE_KIND_CGROUP = 1,	/* id: cgroup v2 inode */
	CT_SCOPE_KIND_UID = 2,		/* id: uid */
	CT_SCOPE_KIND_EXE = 3,		/* id: inode, dev: kernel dev_t of its filesystem */
	CT_SCOPE_KIND_SCOPE = 4,	/* id: scope number; the scope's own settings */
	CT_SCOPE_KIND_SANDBOX = 5,	/* id: cgroup v2 inode of a sandbox (tracectl run) */
};

struct ct_scope_key {
	__u32 gen;		/* configuration generation, 0 or 1 */
	__u32 kind;		/* enum ct_scope_kind */
	__u64 id;
	__u64 dev;
};

struct ct_scope_val {
	__u32 scope;
	__u8 default_verdict;	/* enum ct_verdict + 1; 0: no default, fall through */
	__u8 ipv6_verdict;	/* the same, for IPv6 destinations before any rule */
	__u8 pad[2];
};

/* Scope: generation in the top byte, scope number below, big-endian: part of the LPM prefix. */
struct ct_policy_v4_key {
	__u32 prefixlen;	/* 32 + address prefix length */
	__u8 scope[4];
	__u8 addr[4];
};

struct ct_policy_v6_key {
	__u32 prefixlen;	/* 32 + address prefix length */
	__u8 scope[4];
	__u8 addr[16];
};

struct ct_policy_rule {
	__u16 lo;		/* destination ports, inclusive */
	__u16 hi;
	__u8 protocol;		/* enum ct_proto, 0 for both */
	__u8 verdict;		/* enum ct_verdict, the scope's mode applied */
	__u16 pad;
	__u32 rule_id;		/* 1-based position in the merged configuration */
};

/*
 * Like ct_watch_val: own rules, then those of covering prefixes, in
 * precedence order. The first `nown` are the entry's own; for a whole
 * address (`plen` 32 or 128) they rank with the rules of the hostnames the
 * address was seen for in DNS answers, by rule id.
 */
struct ct_policy_val {
	__u32 nrules;
	__u16 nown;
	__u8 plen;		/* the entry's address prefix length */
	__u8 pad;
	struct ct_policy_rule rules[CT_MAX_PORT_RULES];
};


/*
 * Per-socket storage of the sockets being followed, filled at
 * connect/sendmsg time; lives and dies with the socket.
 */
struct ct_sock {
	__u64 start_ns;		/* 0: not followed */
	__u64 cookie;
	__u32 host_id;
	__u8 protocol;
	__u8 done;		/* end already reported */
	__u8 pad[2];
};

struct ct_dgram_key {
	__u64 cookie;
	__u8 daddr[16];
	__u16 dport;
	__u16 family;
	__u32 pad;
};

/*
 * DNS answers, copied from the packet before the querying process can read
 * it, into the same ring as the connect that may follow: userspace always
 * has the answer before the connect that used it.
 */
#define CT_DNS_LEN 2048		/* payload bytes kept (a power of two): more than a 1232-byte EDNS answer */
#define CT_DNS_PORTS 4		/* resolver ports followed (53 and configured ones) */
#define CT_DNS_PENDING 4	/* queries in flight per socket (A and AAAA, retries) */
#define CT_DNS_RECORDS 64	/* answer records looked at for hostname policy */
#define CT_DNS_NAME_SLOTS 4	/* hostnames one address is remembered for */
#define CT_DNS_QNAME_LEN 256	/* a question name's wire form, at most */

struct ct_dns_event {
	__u32 kind;		/* CT_EV_DNS */
	__u32 pid;		/* tgid that sent the query */
	__u32 uid;		/* its uid */
	__u32 pad0;
	__u64 ts_ns;
	__u64 cookie;		/* the querying socket */
	__u64 cgroup_id;	/* of the task that sent the query */
	__u16 family;		/* of the resolver address */
	__u16 rport;		/* resolver port, host order */
	__u16 len;		/* payload bytes copied */
	__u16 pad;
	__u8 raddr[16];		/* resolver, network order; IPv4 in the first 4 bytes */
	__u8 payload[CT_DNS_LEN];
};

struct ct_dns_query {
	__u8 addr[16];
	__u16 port;		/* resolver port, host order; 0: slot free */
	__u16 txid;		/* as on the wire */
	__u16 family;
	__u8 protocol;		/* IPPROTO_UDP or IPPROTO_TCP */
	__u8 pad;
	__u64 qhash;		/* of the question (ct_name_hash); an answer must repeat it */
};

/* Per-socket storage of the queries a socket sent and awaits answers to. */
struct ct_dns_sock {
	__u32 pid;
	__u32 uid;
	__u32 next;		/* slot the next query takes */
	__u32 pad;
	__u64 cgroup_id;
	struct ct_dns_query q[CT_DNS_PENDING];
};

/*
 * Hostname policy from the answers themselves. A name some rule names is
 * known to the kernel by the FNV-1a hash of its wire form, lowercased
 * (length bytes included, the root label not); an answer to a pending
 * query for such a name marks its A and AAAA addresses with the hash
 * until TTL + grace, before the querying process can read it, and a
 * connect to a marked address is judged by that name's rules as if the
 * daemon had resolved it itself.
 */
enum ct_dns_capacity {
	CT_DNS_NAME_ENTRIES = 16384,	/* names and (scope, name) rules, both generations */
	CT_DNS_ADDR_ENTRIES = 16384,	/* addresses seen, least recently used replaced */
};

struct ct_dns_name_key {
	__u32 gen;
	__u32 pad;
	__u64 hash;
};

struct ct_dns_name_val {
	__u32 grace_s;		/* kept this long past the answer's TTL */
	__u32 pad;
};

/* A scope's rules for one name: a ct_policy_val whose rules are all own. */
struct ct_dns_rule_key {
	__u32 gen;
	__u32 scope;
	__u64 hash;
};

struct ct_dns_addr_key {
	__u16 family;
	__u16 pad;
	__u8 addr[16];		/* network order; IPv4 in the first 4 bytes, the rest 0 */
};

struct ct_dns_addr_val {
	__u64 hash[CT_DNS_NAME_SLOTS];		/* 0: free */
	__u64 expires_ns[CT_DNS_NAME_SLOTS];	/* bpf_ktime_get_ns() time */
};

/*
 * Syscall profiles (profile.bpf.h). The daemon maps each profiled cgroup
 * to a slot of `profiles` and lists the cgroup levels that hold one; a
 * task is counted in the profile of every profiled ancestor of its cgroup
 * (or its own), so cgroups created under a profiled one while it records
 * are in it too.
 */
enum ct_profile_capacity {
	CT_PROFILE_SLOTS = 64,		/* profiles recorded at once */
	CT_PROFILE_LEVELS = 8,		/* distinct cgroup levels holding a profile at once */
	CT_PROFILE_SYSCALLS = 512,	/* syscall numbers per architecture: x86_64 and i386 stay below */
};

enum ct_profile_arch {
	CT_PROFILE_NATIVE = 0,	/* the kernel's own ABI (x86_64) */
	CT_PROFILE_COMPAT = 1,	/* 32-bit compat syscalls (i386 on x86_64) */
	CT_PROFILE__ARCHES,
};

/*
 * A sandbox's profile (`tracectl run --profile-syscalls`) starts armed: the
 * command's launcher runs in the cgroup between its placement and the
 * exec (Landlock, mount masks, the wait for release), and its syscalls are
 * not the command's. The first exec of a task in the cgroup starts it.
 */
enum ct_profile_state {
	CT_PROFILE_RECORDING = 0,	/* every syscall is counted */
	CT_PROFILE_ARMED = 1,		/* nothing is, until a task of the cgroup execs */
};

/* The value of `profile_cgroups`: the cgroup's profile. */
struct ct_profile_target {
	__u32 slot;		/* index into `profiles` */
	__u32 state;		/* enum ct_profile_state */
	/* Armed: the exec syscall a task of the cgroup entered last (execve
	 * or execveat; -1 none), counted when the exec succeeds. A seccomp
	 * filter applied before the exec must allow it, and the kernel
	 * reports every exec as execve once the new program is loaded. */
	__s32 exec_nr;
	__u32 exec_compat;	/* exec_nr is an i386 number */
};

/* The one value of `profile_levels`. */
struct ct_profile_levels {
	__u32 count;				/* entries of `level` in use */
	__u32 level[CT_PROFILE_LEVELS];		/* cgroup levels (root: 0) of profiled cgroups */
};

struct ct_profile {
	/* [arch * CT_PROFILE_SYSCALLS + nr]: flat, as the Rust skeleton cannot derive nested arrays */
	__u64 counts[CT_PROFILE__ARCHES * CT_PROFILE_SYSCALLS];
	__u64 families;		/* bit n: socket(2) or socketpair(2) with address family n */
	__u64 unknown;		/* syscalls outside the table (x32, numbers past CT_PROFILE_SYSCALLS) */
	__u64 socketcall;	/* i386 socketcall(2): its family is behind a user pointer, not read */
};

#endif /* __CONNECTRACER_H */
