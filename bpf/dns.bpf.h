/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * DNS answers per socket (included by connectracer.bpf.c). Egress notes
 * each query (UDP, or TCP in one segment) to a resolver port (resolver,
 * port, protocol, transaction id) in the socket's storage; ingress copies
 * an answer into the ring only when it comes from that resolver and port
 * with that id, so a local process
 * cannot make another socket (or the daemon) believe a name it forged from
 * another port. Both always let the packet through.
 */
#ifndef __CT_DNS_BPF_H
#define __CT_DNS_BPF_H

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define DNS_HDR_LEN 12

/* Resolver ports followed; 0 ends the list. Empty: capture is off. */
const volatile __u16 dns_ports[CT_DNS_PORTS] = {};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct ct_dns_sock);
} dns_socks SEC(".maps");

struct ct_dns_event _ct_dns_event = {};

struct dns_qname {
	__u8 b[CT_DNS_QNAME_LEN];
};

/* Room to hash a question name in (too big for the stack with the rest). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dns_qname);
} dns_scratch SEC(".maps");

#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL
#define DNS_TYPE_A 1
#define DNS_TYPE_AAAA 28
#define DNS_CLASS_IN 1
#define DNS_MAX_TTL 86400	/* longer TTLs are held a day (then the next answer counts) */

struct dns_question {
	__u64 hash;		/* ct_name_hash of the name */
	__u32 len;		/* wire bytes of the name, the root label included */
	__u32 pad;
};

struct dns_pkt {
	__u16 family;
	__u16 sport;
	__u16 dport;
	__u8 protocol;
	__u8 pad;
	__u32 payload_off;	/* the DNS message (after TCP's 2-byte length) */
	__u32 payload_len;	/* of the message, as far as this packet holds it */
	__u8 saddr[16];
	__u8 daddr[16];
};

static __always_inline bool dns_port(__u16 port)
{
	for (int i = 0; i < CT_DNS_PORTS; i++) {
		if (!dns_ports[i])
			return false;
		if (dns_ports[i] == port)
			return true;
	}
	return false;
}

/*
 * The DNS message of an unfragmented IPv4 or IPv6 (no extension headers)
 * UDP datagram or TCP segment. Over TCP, only a segment that holds one
 * whole length-prefixed message counts (a query, or an answer on loopback
 * or a LAN); an answer split across segments is not seen.
 */
static __always_inline int parse_dns(struct __sk_buff *skb, struct dns_pkt *p)
{
	__u32 off, end = skb->len;
	__u8 proto;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)))
			return -1;
		if (ip.frag_off & bpf_htons(0x3fff))
			return -1;
		proto = ip.protocol;
		off = ip.ihl * 4;
		if (off < sizeof(ip))
			return -1;
		p->family = AF_INET;
		__builtin_memcpy(p->saddr, &ip.saddr, 4);
		__builtin_memcpy(p->daddr, &ip.daddr, 4);
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)))
			return -1;
		proto = ip6.nexthdr;
		off = sizeof(ip6);
		p->family = AF_INET6;
		__builtin_memcpy(p->saddr, &ip6.saddr, 16);
		__builtin_memcpy(p->daddr, &ip6.daddr, 16);
	} else {
		return -1;
	}
	p->protocol = proto;
	if (proto == IPPROTO_UDP) {
		struct udphdr uh;

		if (bpf_skb_load_bytes(skb, off, &uh, sizeof(uh)))
			return -1;
		p->sport = bpf_ntohs(uh.source);
		p->dport = bpf_ntohs(uh.dest);
		off += sizeof(uh);
	} else if (proto == IPPROTO_TCP) {
		struct tcphdr th;
		__u16 msg_len;

		if (bpf_skb_load_bytes(skb, off, &th, sizeof(th)))
			return -1;
		p->sport = bpf_ntohs(th.source);
		p->dport = bpf_ntohs(th.dest);
		if (!dns_port(p->sport) && !dns_port(p->dport))
			return -1;
		off += th.doff * 4;
		if (bpf_skb_load_bytes(skb, off, &msg_len, sizeof(msg_len)))
			return -1;
		off += sizeof(msg_len);
		if (end < off || bpf_ntohs(msg_len) != end - off)
			return -1;
	} else {
		return -1;
	}
	p->payload_off = off;
	p->payload_len = end > off ? end - off : 0;
	return 0;
}

/*
 * The first question's name of the DNS message at `off` (`avail` bytes):
 * its hash and length. A global function: verified once.
 */
__noinline int dns_question(struct __sk_buff *skb, __u32 off, __u32 avail, struct dns_question *q)
{
	struct dns_qname *buf;
	__u32 zero = 0, n, next = 0;
	int i;
	__u64 h = FNV_OFFSET;

	if (!skb || !q || avail <= DNS_HDR_LEN)
		return -1;
	buf = bpf_map_lookup_elem(&dns_scratch, &zero);
	if (!buf)
		return -1;
	n = avail - DNS_HDR_LEN;
	if (n > CT_DNS_QNAME_LEN)
		n = CT_DNS_QNAME_LEN;
	/* n itself for n in [1, CT_DNS_QNAME_LEN], in a form the verifier follows. */
	n = ((n - 1) & (CT_DNS_QNAME_LEN - 1)) + 1;
	if (bpf_skb_load_bytes(skb, off + DNS_HDR_LEN, buf->b, n))
		return -1;
	/* An open-coded iterator: the verifier converges instead of walking 256 steps. */
	bpf_for(i, 0, CT_DNS_QNAME_LEN) {
		__u8 c;

		if (i >= n)
			return -1;
		c = buf->b[i];
		if (i == next) {
			if (!c) {
				q->hash = h;
				q->len = i + 1;
				return 0;
			}
			/* Questions are never compressed: a pointer is malformed. */
			if (c > 63)
				return -1;
			next = i + c + 1;
		} else if (c >= 'A' && c <= 'Z') {
			c += 'a' - 'A';
		}
		h = (h ^ c) * FNV_PRIME;
	}
	return -1;
}

/* Marks `addr` as seen for `hash` until `expires`. */
static __always_inline void note_addr(__u16 family, const __u8 *addr, __u64 hash, __u64 expires)
{
	struct ct_dns_addr_key k = { .family = family };
	struct ct_dns_addr_val *v, nv = {};
	__u64 oldest = ~0ULL;
	__u32 slot = 0;

	if (family == AF_INET)
		__builtin_memcpy(k.addr, addr, 4);
	else
		__builtin_memcpy(k.addr, addr, 16);
	v = bpf_map_lookup_elem(&dns_addrs, &k);
	if (!v) {
		nv.hash[0] = hash;
		nv.expires_ns[0] = expires;
		bpf_map_update_elem(&dns_addrs, &k, &nv, BPF_ANY);
		return;
	}
	/* The name's own slot, else the one that expires first (free ones have 0). */
	for (int i = 0; i < CT_DNS_NAME_SLOTS; i++) {
		if (v->hash[i] == hash) {
			slot = i;
			break;
		}
		if (v->expires_ns[i] < oldest) {
			oldest = v->expires_ns[i];
			slot = i;
		}
	}
	slot &= CT_DNS_NAME_SLOTS - 1;
	v->hash[slot] = hash;
	v->expires_ns[slot] = expires;
}

struct dns_walk {
	__u32 off;		/* the first answer record */
	__u32 end;
	__u32 count;		/* ANCOUNT */
	__u32 grace_s;
	__u64 hash;		/* the question's */
};

struct dns_rr {
	__be16 type;
	__be16 class;
	__be32 ttl;
	__be16 rdlen;
} __attribute__((packed));

/* Past a record's owner name: a pointer, or labels ending in one or the root. */
static __always_inline int skip_name(struct __sk_buff *skb, __u32 *off)
{
	int i;

	bpf_for(i, 0, 32) {
		__u8 b;

		if (bpf_skb_load_bytes(skb, *off, &b, 1))
			return -1;
		if ((b & 0xc0) == 0xc0) {
			*off += 2;
			return 0;
		}
		if (b > 63)
			return -1;
		*off += b + 1;
		if (!b)
			return 0;
	}
	return -1;
}

/*
 * The A and AAAA records of an answer (CNAMEs are the resolver's way to
 * them: the addresses are the question's), marked for the question's name.
 */
__noinline int dns_note_answers(struct __sk_buff *skb, struct dns_walk *w)
{
	__u64 now = bpf_ktime_get_ns();
	__u32 off;
	int r;

	if (!skb || !w)
		return 0;
	off = w->off;
	bpf_for(r, 0, CT_DNS_RECORDS) {
		struct dns_rr rr;
		__u8 addr[16] = {};
		__u32 ttl;
		__u16 type, rdlen;

		if (r >= w->count || off >= w->end)
			break;
		if (skip_name(skb, &off) || bpf_skb_load_bytes(skb, off, &rr, sizeof(rr)))
			break;
		off += sizeof(rr);
		type = bpf_ntohs(rr.type);
		rdlen = bpf_ntohs(rr.rdlen);
		ttl = bpf_ntohl(rr.ttl);
		if (ttl > DNS_MAX_TTL)
			ttl = DNS_MAX_TTL;
		if (bpf_ntohs(rr.class) == DNS_CLASS_IN && type == DNS_TYPE_A && rdlen == 4) {
			if (bpf_skb_load_bytes(skb, off, addr, 4))
				break;
			note_addr(AF_INET, addr, w->hash,
				  now + (__u64)(ttl + w->grace_s) * 1000000000ULL);
		} else if (bpf_ntohs(rr.class) == DNS_CLASS_IN && type == DNS_TYPE_AAAA && rdlen == 16) {
			if (bpf_skb_load_bytes(skb, off, addr, 16))
				break;
			note_addr(AF_INET6, addr, w->hash,
				  now + (__u64)(ttl + w->grace_s) * 1000000000ULL);
		}
		off += rdlen;
	}
	return 0;
}

/*
 * The socket of a packet that may carry DNS, or NULL. Every packet of the
 * cgroup passes here; the socket's own ports rule out all of a TCP or
 * connected UDP socket's traffic without reading the packet (reading its
 * headers for each packet cost a connect loop ~3%); only unconnected UDP
 * sockets, whose peer is per datagram, need the packet parsed.
 */
static __always_inline struct bpf_sock *dns_socket(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;
	__u16 dport;

	if (!dns_ports[0] || !sk)
		return NULL;
	sk = bpf_sk_fullsock(sk);
	if (!sk)
		return NULL;
	dport = bpf_ntohs(sk->dst_port);
	if (sk->protocol == IPPROTO_TCP || (sk->protocol == IPPROTO_UDP && dport))
		return dns_port(dport) || dns_port(sk->src_port) ? sk : NULL;
	return sk->protocol == IPPROTO_UDP ? sk : NULL;
}

static __always_inline bool same_addr(const __u8 *a, const __u8 *b, __u16 family)
{
	if (family == AF_INET)
		return __builtin_memcmp(a, b, 4) == 0;
	return __builtin_memcmp(a, b, 16) == 0;
}

SEC("cgroup_skb/egress")
int ct_dns_egress(struct __sk_buff *skb)
{
	struct ct_dns_sock *s;
	struct ct_dns_query *q;
	struct dns_pkt p = {};
	struct dns_question dq = {};
	struct bpf_sock *sk;
	__u16 txid;
	__u32 slot;

	sk = dns_socket(skb);
	if (!sk || parse_dns(skb, &p) || !dns_port(p.dport) || p.payload_len < DNS_HDR_LEN)
		return 1;
	if (bpf_skb_load_bytes(skb, p.payload_off, &txid, sizeof(txid)))
		return 1;
	if (dns_question(skb, p.payload_off, p.payload_len, &dq))
		return 1;
	s = bpf_sk_storage_get(&dns_socks, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!s)
		return 1;
	/*
	 * A UDP send, and a TCP socket's first, run in the sender's context;
	 * a TCP retransmission may run in any task's, which must not rename
	 * the socket's owner.
	 */
	if (!s->pid || p.protocol == IPPROTO_UDP) {
		s->pid = bpf_get_current_pid_tgid() >> 32;
		s->uid = (__u32)bpf_get_current_uid_gid();
		s->cgroup_id = bpf_get_current_cgroup_id();
	}
	slot = s->next++ % CT_DNS_PENDING;
	q = &s->q[slot];
	__builtin_memcpy(q->addr, p.daddr, 16);
	q->port = p.dport;
	q->txid = txid;
	q->qhash = dq.hash;
	q->family = p.family;
	q->protocol = p.protocol;
	return 1;
}

/* The pending query this datagram answers, cleared; -1 if none. */
static __always_inline int take_query(struct ct_dns_sock *s, const struct dns_pkt *p, __u16 txid,
				      __u64 qhash)
{
	for (int i = 0; i < CT_DNS_PENDING; i++) {
		struct ct_dns_query *q = &s->q[i];

		if (q->port && q->port == p->sport && q->txid == txid && q->qhash == qhash &&
		    q->family == p->family &&
		    q->protocol == p->protocol && same_addr(q->addr, p->saddr, p->family)) {
			q->port = 0;
			return i;
		}
	}
	return -1;
}

/* For a name hostname rules of the generation in force name, its addresses. */
static __always_inline void note_policy_answers(struct __sk_buff *skb, const struct dns_pkt *p,
						const struct dns_question *dq, __u32 ancount)
{
	__u32 gen = current_generation();
	const struct ct_config *cfg = bpf_map_lookup_elem(&gen_config, &gen);
	struct ct_dns_name_key k = { .gen = gen, .hash = dq->hash };
	const struct ct_dns_name_val *nv;
	struct dns_walk w = {};

	if (!cfg || !(cfg->policy & CT_POLICY_NAMES))
		return;
	nv = bpf_map_lookup_elem(&dns_names, &k);
	if (!nv)
		return;
	/* The question: its name, then type and class. */
	w.off = p->payload_off + DNS_HDR_LEN + dq->len + 4;
	w.end = p->payload_off + p->payload_len;
	w.count = ancount;
	w.grace_s = nv->grace_s;
	w.hash = dq->hash;
	dns_note_answers(skb, &w);
}

SEC("cgroup_skb/ingress")
int ct_dns_ingress(struct __sk_buff *skb)
{
	struct ct_dns_event *e;
	struct ct_dns_sock *s;
	struct dns_pkt p = {};
	struct dns_question dq = {};
	struct bpf_sock *sk;
	__u8 hdr[8];
	__u32 len;

	sk = dns_socket(skb);
	if (!sk || parse_dns(skb, &p) || !dns_port(p.sport) || p.payload_len < DNS_HDR_LEN)
		return 1;
	s = bpf_sk_storage_get(&dns_socks, sk, 0, 0);
	if (!s)
		return 1;
	if (bpf_skb_load_bytes(skb, p.payload_off, hdr, sizeof(hdr)))
		return 1;
	/* QR set: a response, to the question the socket asked. */
	if (!(hdr[2] & 0x80) || dns_question(skb, p.payload_off, p.payload_len, &dq) ||
	    take_query(s, &p, *(__u16 *)hdr, dq.hash) < 0)
		return 1;
	/* RCODE 0 and one question: addresses for hostname rules. */
	if (!(hdr[3] & 0x0f) && hdr[4] == 0 && hdr[5] == 1)
		note_policy_answers(skb, &p, &dq, ((__u32)hdr[6] << 8) | hdr[7]);
	len = p.payload_len;
	if (len > CT_DNS_LEN)
		len = CT_DNS_LEN;
	if (len < DNS_HDR_LEN)
		return 1;
	e = reserve(sizeof(*e));
	if (!e)
		return 1;
	e->kind = CT_EV_DNS;
	e->pid = s->pid;
	e->uid = s->uid;
	e->pad0 = 0;
	e->ts_ns = bpf_ktime_get_ns();
	e->cookie = bpf_get_socket_cookie(skb);
	e->cgroup_id = s->cgroup_id;
	e->family = p.family;
	e->rport = p.sport;
	e->pad = 0;
	__builtin_memcpy(e->raddr, p.saddr, 16);
	/*
	 * A range the verifier tracks on the register passed: clang folds the
	 * checks above into one unsigned compare of a copy. For len in
	 * [12, CT_DNS_LEN], CT_DNS_LEN a power of two, this is len itself.
	 */
	len = ((len - 1) & (CT_DNS_LEN - 1)) + 1;
	if (bpf_skb_load_bytes(skb, p.payload_off, e->payload, len)) {
		bpf_ringbuf_discard(e, 0);
		return 1;
	}
	e->len = len;
	submit(e);
	return 1;
}

#endif /* __CT_DNS_BPF_H */
