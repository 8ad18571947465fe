// SPDX-License-Identifier: GPL-2.0-only
/*
 * connectracer kernel side: cgroup sock_addr hooks see every connect() and
 * unconnected sendmsg() of the cgroup subtree they are attached to; the TCP
 * state tracepoint follows those sockets (joined by socket cookie) to
 * established / failed / closed; sched tracepoints keep userspace's process
 * cache complete for processes that exit before anyone could read /proc.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "connectracer.h"

#define AF_INET 2
#define AF_INET6 10
#define CT_TCP_ESTABLISHED 1
#define CT_TCP_SYN_SENT 2
#define CT_TCP_CLOSE 7

/* Start-up knobs, set by connectracerd before load. */
/* True when attached below the cgroup root: process events are filtered too. */
const volatile bool filter_scope = false;
/* Wake the reader only once this much is pending (0: wake on every event). */
const volatile __u64 wakeup_bytes = 16384;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 * 1024 * 1024);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CT_STAT__MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

/* One generation of the watch list; see struct ct_config. */
struct watch_v4_trie {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, CT_WATCH_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ct_lpm_v4_key);
	__type(value, struct ct_watch_val);
} watch_v4_0 SEC(".maps"), watch_v4_1 SEC(".maps");

struct watch_v6_trie {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, CT_WATCH_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ct_lpm_v6_key);
	__type(value, struct ct_watch_val);
} watch_v6_0 SEC(".maps"), watch_v6_1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 2);
	__type(key, __u32);
	__array(values, struct watch_v4_trie);
} watch_v4 SEC(".maps") = {
	.values = { &watch_v4_0, &watch_v4_1 },
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 2);
	__type(key, __u32);
	__array(values, struct watch_v6_trie);
} watch_v6 SEC(".maps") = {
	.values = { &watch_v6_0, &watch_v6_1 },
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct ct_config);
} gen_config SEC(".maps");

/* Index (0 or 1) of the generation in force. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} active_gen SEC(".maps");

/*
 * Policy tries and scope map hold both generations side by side (the
 * generation is part of every key), so a reload writes the idle one while
 * the other is in force, like the watch tries.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, CT_POLICY_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ct_policy_v4_key);
	__type(value, struct ct_policy_val);
} policy_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, CT_POLICY_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ct_policy_v6_key);
	__type(value, struct ct_policy_val);
} policy_v6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CT_SCOPE_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ct_scope_key);
	__type(value, struct ct_scope_val);
} policy_scopes SEC(".maps");

/* Hostnames rules name, per generation (see struct ct_dns_name_key). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CT_DNS_NAME_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ct_dns_name_key);
	__type(value, struct ct_dns_name_val);
} dns_names SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CT_DNS_NAME_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ct_dns_rule_key);
	__type(value, struct ct_policy_val);
} dns_rules SEC(".maps");

/* Written by the DNS ingress program only; survives a daemon restart. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CT_DNS_ADDR_ENTRIES);
	__type(key, struct ct_dns_addr_key);
	__type(value, struct ct_dns_addr_val);
} dns_addrs SEC(".maps");

/*
 * Socket-local storage rather than a cookie-keyed hash: the state
 * tracepoint runs for every TCP socket on the host, and a storage lookup
 * neither hashes nor makes the kernel mint a cookie for sockets we do not
 * follow (the server side of every loopback connection, for one).
 */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct ct_sock);
} socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ct_dgram_key);
	__type(value, __u8);
} dgrams SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_CGROUP_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} scope_cgroup SEC(".maps");

/* Forces the shared records into BTF so the skeleton generates their Rust types. */
struct ct_conn_event _ct_conn_event = {};
struct ct_proc_event _ct_proc_event = {};
enum ct_event_kind _ct_event_kind = 0;
enum ct_stat _ct_stat = 0;
enum ct_verdict _ct_verdict = 0;
enum ct_proto _ct_proto = 0;
enum ct_scope_kind _ct_scope_kind = 0;
enum ct_scope_id _ct_scope_id = 0;
enum ct_policy_flag _ct_policy_flag = 0;
enum ct_capacity _ct_capacity = 0;
struct ct_policy_v4_key _ct_policy_v4_key = {};
struct ct_policy_v6_key _ct_policy_v6_key = {};
struct ct_policy_val _ct_policy_val = {};
struct ct_scope_key _ct_scope_key = {};
enum ct_dns_capacity _ct_dns_capacity = 0;
struct ct_dns_name_key _ct_dns_name_key = {};
struct ct_dns_name_val _ct_dns_name_val = {};
struct ct_dns_rule_key _ct_dns_rule_key = {};
struct ct_dns_addr_key _ct_dns_addr_key = {};
struct ct_dns_addr_val _ct_dns_addr_val = {};
struct ct_scope_val _ct_scope_val = {};

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);

	if (v)
		*v += 1;
}

static __always_inline void *reserve(__u64 size)
{
	void *e = bpf_ringbuf_reserve(&events, size, 0);

	if (!e)
		count(CT_STAT_RB_DROPS);
	return e;
}

/*
 * A wakeup per event costs a cross-CPU IPI that dominates the traced
 * process's connect() cost; waking only past a fill threshold (the reader
 * also drains on a timer) keeps tracing near free.
 */
static __always_inline void submit(void *e)
{
	__u64 flags = 0;

	if (wakeup_bytes) {
		__u64 avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);

		flags = avail >= wakeup_bytes ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
	}
	bpf_ringbuf_submit(e, flags);
	count(CT_STAT_EVENTS);
}

/*
 * A connection record reserved and zeroed, with what every kind carries;
 * NULL when the ring is full (counted as a drop by reserve()).
 */
static __always_inline struct ct_conn_event *conn_event(__u32 kind, __u8 protocol, __u64 cookie,
							 __u64 now, __u32 host_id)
{
	struct ct_conn_event *e = reserve(sizeof(*e));

	if (!e)
		return NULL;
	__builtin_memset(e, 0, sizeof(*e));
	e->kind = kind;
	e->protocol = protocol;
	e->ts_ns = now;
	e->cookie = cookie;
	e->host_id = host_id;
	return e;
}

static __always_inline bool in_scope(void)
{
	if (!filter_scope)
		return true;
	return bpf_current_task_under_cgroup(&scope_cgroup, 0) == 1;
}

static __always_inline __u32 match_ports(const struct ct_watch_val *v, __u16 port)
{
	for (int i = 0; i < CT_MAX_PORT_RULES; i++) {
		if (i >= v->nrules)
			break;
		if (port >= v->rules[i].lo && port <= v->rules[i].hi)
			return v->rules[i].host_id;
	}
	return 0;
}

struct dest {
	__u16 family;
	__u16 port;
	__u8 addr[16];
};

/* The generation in force: read once per connection, used for every lookup. */
static __always_inline __u32 current_generation(void)
{
	__u32 zero = 0, *g = bpf_map_lookup_elem(&active_gen, &zero);

	return g ? (*g & 1) : 0;
}

static __always_inline __u32 watch_lookup(const struct dest *d, __u32 gen)
{
	const struct ct_watch_val *v = NULL;
	void *trie;

	if (d->family == AF_INET) {
		struct ct_lpm_v4_key k = { .prefixlen = 32 };

		__builtin_memcpy(k.addr, d->addr, 4);
		trie = bpf_map_lookup_elem(&watch_v4, &gen);
		if (trie)
			v = bpf_map_lookup_elem(trie, &k);
	} else {
		struct ct_lpm_v6_key k = { .prefixlen = 128 };

		__builtin_memcpy(k.addr, d->addr, 16);
		trie = bpf_map_lookup_elem(&watch_v6, &gen);
		if (trie)
			v = bpf_map_lookup_elem(trie, &k);
	}
	return v ? match_ports(v, d->port) : 0;
}

/* ::ffff:a.b.c.d is an IPv4 destination reached through an AF_INET6 socket. */
static __always_inline bool is_v4_mapped(const __u32 w[4])
{
	return w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0x0000ffff);
}

static __always_inline void dest_from_v6(struct dest *d, const __u32 w[4])
{
	if (is_v4_mapped(w)) {
		d->family = AF_INET;
		__builtin_memcpy(d->addr, &w[3], 4);
	} else {
		d->family = AF_INET6;
		__builtin_memcpy(d->addr, w, 16);
	}
}

static __always_inline void fill_current(struct ct_conn_event *e, void *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 uid_gid = bpf_get_current_uid_gid();

	e->pid = pid_tgid >> 32;
	e->tid = (__u32)pid_tgid;
	e->uid = (__u32)uid_gid;
	e->gid = uid_gid >> 32;
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->netns_cookie = bpf_get_netns_cookie(ctx);
	bpf_get_current_comm(e->comm, sizeof(e->comm));
}

struct judgement {
	__u8 verdict;
	__u8 decided;
	/* The caller is in a sandbox: its connections are reported even when unwatched. */
	__u8 sandboxed;
	__u32 rule;
	/* Hostnames the destination was seen for in DNS answers, unexpired. */
	__u32 nnames;
	__u64 names[CT_DNS_NAME_SLOTS];
};

struct hit {
	__u8 protocol;		/* in: the call's */
	__u8 verdict;
	__u8 found;
	__u32 rule;
};

/*
 * The first of rules [from, to) of `v` that matches, into `h`; 0 if one
 * does. A global function, verified once: inlined, its loop made each
 * connect program take seconds to verify.
 */
__noinline int first_match(const struct ct_policy_val *v, __u32 from, __u32 to, const struct dest *d,
			   struct hit *h)
{
	int i;

	if (!v || !d || !h)
		return -1;
	bpf_for(i, 0, CT_MAX_PORT_RULES) {
		const struct ct_policy_rule *r = &v->rules[i];

		if (i < from)
			continue;
		if (i >= to || i >= v->nrules)
			break;
		if (d->port < r->lo || d->port > r->hi)
			continue;
		if (r->protocol && r->protocol != h->protocol)
			continue;
		h->rule = r->rule_id;
		h->verdict = r->verdict;
		h->found = 1;
		return 0;
	}
	return -1;
}

/*
 * The earliest (lowest rule id) rule that matches among the address's own
 * ones and those of the names it was seen for; sets `j` and returns 1 if
 * one does.
 */
static __always_inline int judge_names(__u32 scope, __u32 gen, const struct dest *d, __u8 protocol,
				       const struct ct_policy_val *v, __u32 own, struct judgement *j)
{
	struct hit best = { .protocol = protocol };
	int n;

	if (v)
		first_match(v, 0, own, d, &best);
	bpf_for(n, 0, CT_DNS_NAME_SLOTS) {
		struct ct_dns_rule_key k = { .gen = gen, .scope = scope };
		struct hit h = { .protocol = protocol };

		if (n >= j->nnames)
			break;
		k.hash = j->names[n];
		if (first_match(bpf_map_lookup_elem(&dns_rules, &k), 0, CT_MAX_PORT_RULES, d, &h))
			continue;
		if (!best.found || h.rule < best.rule)
			best = h;
	}
	if (!best.found)
		return 0;
	j->verdict = best.verdict;
	j->rule = best.rule;
	j->decided = 1;
	return 1;
}

/*
 * One scope's say on a destination: IPv6 blocking first, then the rules of
 * the longest matching prefix (which also carries the covering prefixes'
 * rules, in precedence order), then the scope's default. Sets `decided`
 * when the scope had a say; otherwise the next scope is asked.
 *
 * A global function: the verifier checks it once, not once per call site
 * and path, which keeps loading fast with the per-scope calls below.
 */
__noinline int judge_scope(__u32 scope, __u32 gen, const struct dest *d, __u8 protocol,
				  struct judgement *j)
{
	struct ct_scope_key sk = { .gen = gen, .kind = CT_SCOPE_KIND_SCOPE, .id = scope };
	const struct ct_scope_val *sv = bpf_map_lookup_elem(&policy_scopes, &sk);
	const struct ct_policy_val *v;
	__u32 tag = bpf_htonl((gen << 24) | (scope & 0xffffff));
	__u32 own;

	if (!j || !d)
		return 0;
	if (sv && d->family == AF_INET6 && sv->ipv6_verdict) {
		j->verdict = sv->ipv6_verdict - 1;
		j->rule = 0;
		j->decided = 1;
		return 0;
	}
	if (d->family == AF_INET) {
		struct ct_policy_v4_key k = { .prefixlen = 64 };

		__builtin_memcpy(k.scope, &tag, 4);
		__builtin_memcpy(k.addr, d->addr, 4);
		v = bpf_map_lookup_elem(&policy_v4, &k);
	} else {
		struct ct_policy_v6_key k = { .prefixlen = 160 };

		__builtin_memcpy(k.scope, &tag, 4);
		__builtin_memcpy(k.addr, d->addr, 16);
		v = bpf_map_lookup_elem(&policy_v6, &k);
	}
	own = 0;
	if (v && v->plen == (d->family == AF_INET ? 32 : 128))
		own = v->nown;
	if (j->nnames && judge_names(scope, gen, d, protocol, v, own, j))
		return 0;
	if (v) {
		struct hit h = { .protocol = protocol };

		/* With names, the own rules were asked above. */
		if (!first_match(v, j->nnames ? own : 0, CT_MAX_PORT_RULES, d, &h)) {
			j->verdict = h.verdict;
			j->rule = h.rule;
			j->decided = 1;
			return 0;
		}
	}
	if (sv && sv->default_verdict) {
		j->verdict = sv->default_verdict - 1;
		j->rule = 0;
		j->decided = 1;
	}
	return 0;
}

static __always_inline void seen_names(const struct dest *d, struct judgement *j)
{
	struct ct_dns_addr_key k = { .family = d->family };
	const struct ct_dns_addr_val *v;
	__u64 now;

	if (d->family == AF_INET)
		__builtin_memcpy(k.addr, d->addr, 4);
	else
		__builtin_memcpy(k.addr, d->addr, 16);
	v = bpf_map_lookup_elem(&dns_addrs, &k);
	if (!v)
		return;
	now = bpf_ktime_get_ns();
	for (int i = 0; i < CT_DNS_NAME_SLOTS; i++) {
		if (!v->hash[i] || v->expires_ns[i] <= now)
			continue;
		j->names[j->nnames & (CT_DNS_NAME_SLOTS - 1)] = v->hash[i];
		j->nnames++;
	}
}

static __always_inline __u32 scope_of(__u32 gen, __u32 kind, __u64 id, __u64 dev)
{
	struct ct_scope_key k = { .gen = gen, .kind = kind, .id = id, .dev = dev };
	const struct ct_scope_val *v = bpf_map_lookup_elem(&policy_scopes, &k);

	return v ? v->scope : 0;
}

/*
 * The documented precedence: built-in exceptions, then the caller's
 * executable, user, and cgroups from the deepest up, then the global rules
 * and default. The first scope with a say decides.
 */
static __always_inline void judge_host(const struct ct_config *cfg, __u32 gen, const struct dest *d,
				       __u8 protocol, struct judgement *j)
{
	__u64 ancestors[CT_MAX_CGROUP_DEPTH];
	__u32 scope, n = 0;

	judge_scope(CT_SCOPE_BUILTIN, gen, d, protocol, j);
	if (j->decided)
		return;
	if (cfg->policy & CT_POLICY_EXE) {
		struct task_struct *t = bpf_get_current_task_btf();
		struct inode *ino = BPF_CORE_READ(t, mm, exe_file, f_inode);

		if (ino) {
			scope = scope_of(gen, CT_SCOPE_KIND_EXE, BPF_CORE_READ(ino, i_ino),
					 BPF_CORE_READ(ino, i_sb, s_dev));
			if (scope) {
				judge_scope(scope, gen, d, protocol, j);
				if (j->decided)
					return;
			}
		}
	}
	if (cfg->policy & CT_POLICY_UID) {
		scope = scope_of(gen, CT_SCOPE_KIND_UID, (__u32)bpf_get_current_uid_gid(), 0);
		if (scope) {
			judge_scope(scope, gen, d, protocol, j);
			if (j->decided)
				return;
		}
	}
	if (cfg->policy & CT_POLICY_CGROUP) {
		/* Level 0 is the root; ancestors are listed root-down, then walked back. */
		for (int i = 0; i < CT_MAX_CGROUP_DEPTH; i++) {
			__u64 id = bpf_get_current_ancestor_cgroup_id(i + 1);

			if (!id)
				break;
			ancestors[i] = id;
			n = i + 1;
		}
		for (int i = CT_MAX_CGROUP_DEPTH - 1; i >= 0; i--) {
			if (i >= n)
				continue;
			scope = scope_of(gen, CT_SCOPE_KIND_CGROUP, ancestors[i], 0);
			if (!scope)
				continue;
			judge_scope(scope, gen, d, protocol, j);
			if (j->decided)
				return;
		}
	}
	judge_scope(CT_SCOPE_GLOBAL, gen, d, protocol, j);
}

/*
 * A sandbox (tracectl run) can only narrow what the host's policy allows:
 * its scope is asked first, before even the built-in exceptions, and a
 * deny there is final; anything it lets through is then judged by the host
 * chain as if there were no sandbox. Its own processes cannot create
 * cgroups below it (root owns it), so the current cgroup is the one to ask.
 */
static __always_inline void judge(const struct ct_config *cfg, __u32 gen, const struct dest *d,
				  __u8 protocol, struct judgement *j)
{
	__u32 audited = 0, audit_rule = 0, scope;

	if (cfg->policy & CT_POLICY_NAMES)
		seen_names(d, j);
	if (cfg->policy & CT_POLICY_SANDBOX) {
		scope = scope_of(gen, CT_SCOPE_KIND_SANDBOX, bpf_get_current_cgroup_id(), 0);
		if (scope) {
			j->sandboxed = 1;
			judge_scope(scope, gen, d, protocol, j);
			if (j->decided && j->verdict == CT_VERDICT_DENY)
				return;
			if (j->decided && j->verdict == CT_VERDICT_AUDIT) {
				audited = 1;
				audit_rule = j->rule;
			}
			j->decided = 0;
			j->verdict = CT_VERDICT_ALLOW;
			j->rule = 0;
		}
	}
	judge_host(cfg, gen, d, protocol, j);
	if (audited && j->verdict != CT_VERDICT_DENY) {
		j->verdict = CT_VERDICT_AUDIT;
		j->rule = audit_rule;
	}
}

/*
 * Shared by connect4/6 and sendmsg4/6. Returns what the hook must return:
 * 1 lets the call proceed, 0 makes it fail with EPERM.
 */
static __always_inline int on_egress(struct bpf_sock_addr *ctx, const struct dest *d, __u32 kind)
{
	__u8 protocol = ctx->protocol;
	struct judgement j = {};
	__u64 cookie, now;
	__u32 host_id, gen;
	const struct ct_config *cfg;
	struct ct_conn_event *e;
	bool first = true;

	if (protocol != IPPROTO_TCP && protocol != IPPROTO_UDP) {
		count(CT_STAT_OTHER_PROTO);
		return 1;
	}
	gen = current_generation();
	cfg = bpf_map_lookup_elem(&gen_config, &gen);
	if (!cfg)
		return 1;
	/* Judged on every call, datagrams included: a verdict is never cached. */
	if (cfg->policy & CT_POLICY_ON)
		judge(cfg, gen, d, protocol, &j);
	if (j.verdict == CT_VERDICT_DENY)
		count(CT_STAT_DENIED);
	else if (j.verdict == CT_VERDICT_AUDIT)
		count(CT_STAT_WOULD_DENY);

	cookie = bpf_get_socket_cookie(ctx);
	if (kind == CT_EV_SENDMSG) {
		struct ct_dgram_key dk = { .cookie = cookie, .dport = d->port, .family = d->family };
		__u8 one = 1;

		__builtin_memcpy(dk.daddr, d->addr, 16);
		/* Reported once per (socket, destination); refused again each time. */
		if (bpf_map_lookup_elem(&dgrams, &dk)) {
			count(CT_STAT_SENDMSG_DUP);
			first = false;
		} else {
			bpf_map_update_elem(&dgrams, &dk, &one, BPF_ANY);
			count(CT_STAT_SENDMSG_NEW);
		}
	} else {
		count(CT_STAT_CONNECTS);
	}
	if (!first)
		return j.verdict == CT_VERDICT_DENY ? 0 : 1;

	host_id = watch_lookup(d, gen);
	if (!host_id && !cfg->trace_all && !j.sandboxed && j.verdict == CT_VERDICT_ALLOW) {
		count(CT_STAT_UNWATCHED);
		return 1;
	}

	now = bpf_ktime_get_ns();
	if (j.verdict != CT_VERDICT_DENY) {
		struct ct_sock *s = bpf_sk_storage_get(&socks, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);

		/* Sendmsg keeps the first destination's start time for the socket. */
		if (s && (kind == CT_EV_CONNECT || !s->start_ns)) {
			s->start_ns = now;
			s->cookie = cookie;
			s->host_id = host_id;
			s->protocol = protocol;
			s->done = 0;
		}
	}

	e = conn_event(kind, protocol, cookie, now, host_id);
	if (e) {
		e->family = d->family;
		e->verdict = j.verdict;
		__builtin_memcpy(e->daddr, d->addr, 16);
		e->dport = d->port;
		e->policy_rule = j.rule;
		e->epoch = cfg->epoch;
		fill_current(e, ctx);
		submit(e);
	}
	return j.verdict == CT_VERDICT_DENY ? 0 : 1;
}

SEC("cgroup/connect4")
int ct_connect4(struct bpf_sock_addr *ctx)
{
	struct dest d = { .family = AF_INET };
	__u32 ip = ctx->user_ip4;

	__builtin_memcpy(d.addr, &ip, 4);
	d.port = bpf_ntohs(ctx->user_port);
	return on_egress(ctx, &d, CT_EV_CONNECT);
}

/* sock_addr context fields must be read one 32-bit word at a time. */
static __always_inline void read_user_ip6(struct bpf_sock_addr *ctx, __u32 w[4])
{
	w[0] = ctx->user_ip6[0];
	w[1] = ctx->user_ip6[1];
	w[2] = ctx->user_ip6[2];
	w[3] = ctx->user_ip6[3];
}

SEC("cgroup/connect6")
int ct_connect6(struct bpf_sock_addr *ctx)
{
	struct dest d = {};
	__u32 w[4];

	read_user_ip6(ctx, w);
	dest_from_v6(&d, w);
	d.port = bpf_ntohs(ctx->user_port);
	return on_egress(ctx, &d, CT_EV_CONNECT);
}

SEC("cgroup/sendmsg4")
int ct_sendmsg4(struct bpf_sock_addr *ctx)
{
	struct dest d = { .family = AF_INET };
	__u32 ip = ctx->user_ip4;

	__builtin_memcpy(d.addr, &ip, 4);
	d.port = bpf_ntohs(ctx->user_port);
	return on_egress(ctx, &d, CT_EV_SENDMSG);
}

SEC("cgroup/sendmsg6")
int ct_sendmsg6(struct bpf_sock_addr *ctx)
{
	struct dest d = {};
	__u32 w[4];

	read_user_ip6(ctx, w);
	dest_from_v6(&d, w);
	d.port = bpf_ntohs(ctx->user_port);
	return on_egress(ctx, &d, CT_EV_SENDMSG);
}

static __always_inline void fill_from_sock(struct ct_conn_event *e, const struct sock *sk)
{
	const struct inet_sock *inet = (const struct inet_sock *)sk;
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);

	if (family == AF_INET6) {
		__u32 dw[4], sw[4];
		struct dest d = {};

		BPF_CORE_READ_INTO(&dw, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr32);
		BPF_CORE_READ_INTO(&sw, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr32);
		dest_from_v6(&d, dw);
		e->family = d.family;
		__builtin_memcpy(e->daddr, d.addr, 16);
		dest_from_v6(&d, sw);
		__builtin_memcpy(e->saddr, d.addr, 16);
	} else {
		__u32 da = BPF_CORE_READ(sk, __sk_common.skc_daddr);
		__u32 sa = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);

		e->family = AF_INET;
		__builtin_memcpy(e->daddr, &da, 4);
		__builtin_memcpy(e->saddr, &sa, 4);
	}
	e->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	/* skc_num is already 0 once the socket is unhashed at close; inet_sport is not. */
	e->sport = bpf_ntohs(BPF_CORE_READ(inet, inet_sport));
}

/*
 * Runs for every TCP state change on the host, often in softirq context
 * where the current task is unrelated to the socket: only sockets found in
 * `socks` are followed, and nothing is taken from the current task.
 */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(ct_state, const struct sock *sk, const int oldstate, const int newstate)
{
	struct ct_conn_event *e;
	struct ct_sock *s;
	__u64 cookie, now;
	__u32 kind;

	if (sk->sk_protocol != IPPROTO_TCP)
		return 0;
	if (newstate == CT_TCP_ESTABLISHED && oldstate == CT_TCP_SYN_SENT)
		kind = CT_EV_ESTABLISHED;
	else if (newstate == CT_TCP_CLOSE && oldstate == CT_TCP_SYN_SENT)
		kind = CT_EV_FAILED;
	else if (newstate == CT_TCP_CLOSE)
		kind = CT_EV_CLOSED;
	else
		return 0;

	s = bpf_sk_storage_get(&socks, (void *)sk, 0, 0);
	if (!s || !s->start_ns || s->done)
		return 0;
	cookie = s->cookie;
	count(CT_STAT_STATE_CHANGES);
	now = bpf_ktime_get_ns();

	e = conn_event(kind, IPPROTO_TCP, cookie, now, s->host_id);
	if (e) {
		e->old_state = oldstate;
		e->new_state = newstate;
		fill_from_sock(e, sk);
		if (kind != CT_EV_ESTABLISHED)
			e->duration_ns = now - s->start_ns;
		if (kind == CT_EV_FAILED)
			e->error = sk->sk_err;
		if (kind == CT_EV_CLOSED) {
			struct tcp_sock *tp = bpf_skc_to_tcp_sock((void *)sk);

			if (tp) {
				__u64 flags = sk->__sk_common.skc_flags;
				__u64 fin = (flags >> bpf_core_enum_value(enum sock_flags, SOCK_DONE)) & 1;
				__u64 rcvd = tp->bytes_received;

				/* bytes_sent counts retransmissions; bytes_received counts a received FIN. */
				e->bytes_sent = tp->bytes_sent - tp->bytes_retrans;
				e->bytes_received = rcvd >= fin ? rcvd - fin : 0;
			}
		}
		submit(e);
	}
	if (kind != CT_EV_ESTABLISHED)
		s->done = 1;
	return 0;
}

/*
 * UDP has no state machine to follow: its close is the socket's release.
 * A TCP socket released while still in CLOSE never got past connect()
 * (the connect failed synchronously) and would otherwise never be reported.
 */
SEC("cgroup/sock_release")
int ct_sock_release(struct bpf_sock *ctx)
{
	struct ct_conn_event *e;
	struct ct_sock *s;
	__u64 cookie, now;
	__u32 kind;

	if (ctx->protocol == IPPROTO_UDP)
		kind = CT_EV_CLOSED;
	else if (ctx->protocol == IPPROTO_TCP && ctx->state == CT_TCP_CLOSE)
		kind = CT_EV_FAILED;
	else
		return 1;

	s = bpf_sk_storage_get(&socks, ctx, 0, 0);
	if (!s || !s->start_ns || s->done)
		return 1;
	cookie = s->cookie;
	now = bpf_ktime_get_ns();
	e = conn_event(kind, ctx->protocol, cookie, now, s->host_id);
	if (e) {
		e->family = ctx->family;
		e->duration_ns = now - s->start_ns;
		fill_current(e, ctx);
		submit(e);
	}
	s->done = 1;
	return 1;
}

/* Before the process programs: sched_process_exec starts armed profiles. */
#include "profile.bpf.h"

static __always_inline struct ct_proc_event *proc_event(__u32 kind, struct task_struct *p)
{
	struct ct_proc_event *e;
	__u64 uid_gid;

	/* Counted as attempts, so that events + drops adds up exactly. */
	count(CT_STAT_PROC_EVENTS);
	e = reserve(sizeof(*e));
	if (!e)
		return NULL;
	uid_gid = bpf_get_current_uid_gid();
	e->kind = kind;
	e->pid = BPF_CORE_READ(p, tgid);
	e->ppid = BPF_CORE_READ(p, real_parent, tgid);
	e->uid = (__u32)uid_gid;
	e->gid = uid_gid >> 32;
	e->args_len = 0;
	e->args_total = 0;
	e->ts_ns = bpf_ktime_get_ns();
	e->start_ns = BPF_CORE_READ(p, start_time);
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->exit_code = 0;
	e->filename_len = 0;
	e->filename[0] = 0;
	e->args[0] = 0;
	bpf_probe_read_kernel_str(e->comm, sizeof(e->comm), p->comm);
	return e;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(ct_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	struct ct_proc_event *e;
	unsigned long start, end;
	__u64 len;
	long n;

	/* Whatever the scope: a profiled cgroup may lie outside it. */
	profile_exec();
	if (!in_scope())
		return 0;
	e = proc_event(CT_EV_EXEC, p);
	if (!e)
		return 0;
	n = bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), BPF_CORE_READ(bprm, filename));
	e->filename_len = n > 0 ? n - 1 : 0;

	start = BPF_CORE_READ(p, mm, arg_start);
	end = BPF_CORE_READ(p, mm, arg_end);
	len = end > start ? end - start : 0;
	e->args_total = len;
	if (len > CT_ARGS_LEN)
		len = CT_ARGS_LEN;
	barrier_var(len);
	if (len > 0 && len <= CT_ARGS_LEN && bpf_probe_read_user(e->args, len, (void *)start) == 0)
		e->args_len = len;
	submit(e);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(ct_fork, struct task_struct *parent, struct task_struct *child)
{
	struct ct_proc_event *e;

	/* Threads share their process's entry; only new processes matter. */
	if (BPF_CORE_READ(child, pid) != BPF_CORE_READ(child, tgid) || !in_scope())
		return 0;
	e = proc_event(CT_EV_FORK, child);
	if (!e)
		return 0;
	e->ppid = BPF_CORE_READ(parent, tgid);
	submit(e);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(ct_exit, struct task_struct *p)
{
	struct ct_proc_event *e;

	/* signal->live reaches 0 when the last thread of the process exits. */
	if (BPF_CORE_READ(p, signal, live.counter) != 0 || !in_scope())
		return 0;
	e = proc_event(CT_EV_EXIT, p);
	if (!e)
		return 0;
	e->exit_code = BPF_CORE_READ(p, exit_code);
	submit(e);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
#include "dns.bpf.h"
#include "level.bpf.h"
