/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * DNS answers per socket (included by connectracer.bpf.c). Egress notes
 * each UDP query to a resolver port (resolver, port, transaction id) in the
 * socket's storage; ingress copies an answer into the ring only when it
 * comes from that resolver and port with that id, so a local process
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

struct udp_pkt {
	__u16 family;
	__u16 sport;
	__u16 dport;
	__u16 pad;
	__u32 payload_off;
	__u32 payload_len;
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

/* The UDP header of an unfragmented IPv4 or IPv6 (no extension headers) datagram. */
static __always_inline int parse_udp(struct __sk_buff *skb, struct udp_pkt *p)
{
	struct udphdr uh;
	__u32 off;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)))
			return -1;
		if (ip.protocol != IPPROTO_UDP || (ip.frag_off & bpf_htons(0x3fff)))
			return -1;
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
		if (ip6.nexthdr != IPPROTO_UDP)
			return -1;
		off = sizeof(ip6);
		p->family = AF_INET6;
		__builtin_memcpy(p->saddr, &ip6.saddr, 16);
		__builtin_memcpy(p->daddr, &ip6.daddr, 16);
	} else {
		return -1;
	}
	if (bpf_skb_load_bytes(skb, off, &uh, sizeof(uh)))
		return -1;
	p->sport = bpf_ntohs(uh.source);
	p->dport = bpf_ntohs(uh.dest);
	p->payload_off = off + sizeof(uh);
	p->payload_len = skb->len > p->payload_off ? skb->len - p->payload_off : 0;
	return 0;
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
	struct udp_pkt p = {};
	struct bpf_sock *sk;
	__u16 txid;
	__u32 slot;

	if (!dns_ports[0] || parse_udp(skb, &p) || !dns_port(p.dport) || p.payload_len < DNS_HDR_LEN)
		return 1;
	sk = skb->sk;
	if (!sk)
		return 1;
	sk = bpf_sk_fullsock(sk);
	if (!sk)
		return 1;
	if (bpf_skb_load_bytes(skb, p.payload_off, &txid, sizeof(txid)))
		return 1;
	s = bpf_sk_storage_get(&dns_socks, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!s)
		return 1;
	/* UDP sends run in the sender's context: the querying process. */
	s->pid = bpf_get_current_pid_tgid() >> 32;
	s->cgroup_id = bpf_get_current_cgroup_id();
	slot = s->next++ % CT_DNS_PENDING;
	q = &s->q[slot];
	__builtin_memcpy(q->addr, p.daddr, 16);
	q->port = p.dport;
	q->txid = txid;
	q->family = p.family;
	return 1;
}

/* The pending query this datagram answers, cleared; -1 if none. */
static __always_inline int take_query(struct ct_dns_sock *s, const struct udp_pkt *p, __u16 txid)
{
	for (int i = 0; i < CT_DNS_PENDING; i++) {
		struct ct_dns_query *q = &s->q[i];

		if (q->port && q->port == p->sport && q->txid == txid && q->family == p->family &&
		    same_addr(q->addr, p->saddr, p->family)) {
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
	struct udp_pkt p = {};
	struct bpf_sock *sk;
	__u8 hdr[4];
	__u32 len;

	if (!dns_ports[0] || parse_udp(skb, &p) || !dns_port(p.sport) || p.payload_len < DNS_HDR_LEN)
		return 1;
	sk = skb->sk;
	if (!sk)
		return 1;
	sk = bpf_sk_fullsock(sk);
	if (!sk)
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
