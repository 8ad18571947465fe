/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Syscall profiles: which syscalls (per architecture, with counts) and which
 * socket families the tasks of a profiled cgroup and its descendants use.
 * The program is attached only while some profile records: a sys_enter
 * program, once attached, sends every syscall of the host through the
 * tracepoint's slow entry path, profiled cgroup or not.
 */
#ifndef __CT_PROFILE_BPF_H
#define __CT_PROFILE_BPF_H

#define CT_NR_SOCKET 41
#define CT_NR_SOCKETPAIR 53
#define CT_NR32_SOCKETCALL 102
#define CT_NR32_SOCKET 359
#define CT_NR32_SOCKETPAIR 360
#define CT_NR_EXECVE 59
#define CT_NR_EXECVEAT 322
#define CT_NR32_EXECVE 11
#define CT_NR32_EXECVEAT 358
/* arch/x86/include/asm/thread_info.h: a 32-bit syscall is in progress. */
#define CT_TS_COMPAT 0x0002

/* cgroup id -> its profile's slot; written by connectracerd. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CT_PROFILE_SLOTS);
	__type(key, __u64);
	__type(value, struct ct_profile_target);
} profile_cgroups SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ct_profile_levels);
} profile_levels SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CT_PROFILE_SLOTS);
	__type(key, __u32);
	__type(value, struct ct_profile);
} profiles SEC(".maps");

enum ct_profile_arch _ct_profile_arch = 0;
enum ct_profile_capacity _ct_profile_capacity = 0;
enum ct_profile_state _ct_profile_state = 0;
struct ct_profile_target _ct_profile_target = {};
struct ct_profile_levels _ct_profile_levels = {};
struct ct_profile _ct_profile = {};

static __always_inline __u32 profile_compat(void)
{
#if defined(__TARGET_ARCH_x86)
	struct task_struct *task = bpf_get_current_task_btf();

	/* A trusted BTF pointer: a plain (CO-RE relocated) load, no helper. */
	return (task->thread_info.status & CT_TS_COMPAT) ? 1 : 0;
#else
	return 0;
#endif
}

/* The family argument of socket(2)/socketpair(2), or -1 for other syscalls. */
static __always_inline long profile_family(struct pt_regs *regs, long id, __u32 compat)
{
#if defined(__TARGET_ARCH_x86)
	if (!compat && (id == CT_NR_SOCKET || id == CT_NR_SOCKETPAIR))
		return (int)regs->di;
	if (compat && (id == CT_NR32_SOCKET || id == CT_NR32_SOCKETPAIR))
		return (int)regs->bx;
#endif
	return -1;
}

/* Global, so the verifier checks it once rather than per call site. */
__noinline int profile_count(__u32 slot, long id, __u32 compat, long family)
{
	struct ct_profile *p = bpf_map_lookup_elem(&profiles, &slot);

	if (!p)
		return 0;
	if (id < 0 || id >= CT_PROFILE_SYSCALLS)
		__sync_fetch_and_add(&p->unknown, 1);
	else if (compat)
		__sync_fetch_and_add(&p->counts[CT_PROFILE_COMPAT * CT_PROFILE_SYSCALLS + id], 1);
	else
		__sync_fetch_and_add(&p->counts[CT_PROFILE_NATIVE * CT_PROFILE_SYSCALLS + id], 1);
	if (family >= 0 && family < 64)
		__sync_fetch_and_or(&p->families, 1ULL << family);
	else if (compat && id == CT_NR32_SOCKETCALL)
		__sync_fetch_and_add(&p->socketcall, 1);
	return 0;
}

static __always_inline bool profile_is_exec(long id, __u32 compat)
{
	if (compat)
		return id == CT_NR32_EXECVE || id == CT_NR32_EXECVEAT;
	return id == CT_NR_EXECVE || id == CT_NR_EXECVEAT;
}

/* The profile, if any, of the current task's ancestor at the profiled
 * level `lv->level[i]`: a task's ancestor at that level is the profiled
 * cgroup if any is. */
static __always_inline struct ct_profile_target *profile_target(struct ct_profile_levels *lv, int i)
{
	__u64 cgroup = bpf_get_current_ancestor_cgroup_id(lv->level[i]);

	if (!cgroup)
		return NULL;
	return bpf_map_lookup_elem(&profile_cgroups, &cgroup);
}

/*
 * From sched_process_exec, for every exec on the host: armed profiles of
 * the task's cgroups start recording, with the exec call that got here.
 * With no profile recording this is one array lookup.
 */
static __always_inline void profile_exec(void)
{
	struct ct_profile_levels *lv;
	struct ct_profile_target *t;
	__u32 zero = 0, compat;
	long nr;
	int i;

	lv = bpf_map_lookup_elem(&profile_levels, &zero);
	if (!lv)
		return;
#pragma unroll
	for (i = 0; i < CT_PROFILE_LEVELS; i++) {
		if (i >= lv->count)
			break;
		t = profile_target(lv, i);
		if (!t || t->state != CT_PROFILE_ARMED)
			continue;
		nr = t->exec_nr;
		compat = t->exec_compat;
		/* Not seen entering (the program attached mid-call): the usual one. */
		if (nr < 0) {
			nr = CT_NR_EXECVE;
			compat = 0;
		}
		t->state = CT_PROFILE_RECORDING;
		profile_count(t->slot, nr, compat, -1);
	}
}

SEC("tp_btf/sys_enter")
int BPF_PROG(ct_sys_enter, struct pt_regs *regs, long id)
{
	__u32 zero = 0, compat = 0, found = 0;
	int i;
	struct ct_profile_levels *lv;
	struct ct_profile_target *t;
	long family = -1;

	lv = bpf_map_lookup_elem(&profile_levels, &zero);
	if (!lv)
		return 0;
	/* One lookup per level holding a profile (usually one). Unrolled
	 * rather than bpf_for: its iterator's kfunc calls cost every syscall
	 * of the host more than the eight short copies cost the verifier. */
#pragma unroll
	for (i = 0; i < CT_PROFILE_LEVELS; i++) {
		if (i >= lv->count)
			break;
		t = profile_target(lv, i);
		if (!t)
			continue;
		if (!found) {
			found = 1;
			compat = profile_compat();
			family = profile_family(regs, id, compat);
		}
		if (t->state == CT_PROFILE_ARMED) {
			/* The launcher's, or the exec that ends it: kept for profile_exec. */
			if (profile_is_exec(id, compat)) {
				t->exec_nr = id;
				t->exec_compat = compat;
			}
			continue;
		}
		profile_count(t->slot, id, compat, family);
	}
	return 0;
}

#endif /* __CT_PROFILE_BPF_H */
