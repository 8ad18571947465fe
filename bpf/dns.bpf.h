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
	struct bpf_sock *sk;
	__u16 txid;
	__u32 slot;

	sk = dns_socket(skb);
	if (!sk || parse_dns(skb, &p) || !dns_port(p.dport) || p.payload_len < DNS_HDR_LEN)
		return 1;
	if (bpf_skb_load_bytes(skb, p.payload_off, &txid, sizeof(txid)))
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
	q->family = p.family;
	q->protocol = p.protocol;
	return 1;
}

/* The pending query this datagram answers, cleared; -1 if none. */
static __always_inline int take_query(struct ct_dns_sock *s, const struct dns_pkt *p, __u16 txid)
{
	for (int i = 0; i < CT_DNS_PENDING; i++) {
		struct ct_dns_query *q = &s->q[i];

		if (q->port && q->port == p->sport && q->txid == txid && q->family == p->family &&
		    q->protocol == p->protocol && same_addr(q->addr, p->saddr, p->family)) {
			q->port = 0;
			return i;
		}
	}
	return -1;
}

SEC("cgroup_skb/ingress")
int ct_dns_ingress(struct __sk_buff *skb)
{
	struct ct_dns_event *e;
	struct ct_dns_sock *s;
	struct dns_pkt p = {};
	struct bpf_sock *sk;
	__u8 hdr[4];
	__u32 len;

	sk = dns_socket(skb);
	if (!sk || parse_dns(skb, &p) || !dns_port(p.sport) || p.payload_len < DNS_HDR_LEN)
		return 1;
	s = bpf_sk_storage_get(&dns_socks, sk, 0, 0);
	if (!s)
		return 1;
	if (bpf_skb_load_bytes(skb, p.payload_off, hdr, sizeof(hdr)))
		return 1;
	/* QR set: a response. */
	if (!(hdr[2] & 0x80) || take_query(s, &p, *(__u16 *)hdr) < 0)
		return 1;
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
