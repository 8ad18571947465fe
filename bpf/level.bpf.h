/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * A cgroup's level in the whole hierarchy (the root's is 0): what
 * bpf_get_current_ancestor_cgroup_id() counts in. The daemon's paths are
 * relative to its cgroup namespace, whose root may be anywhere (a pod, the
 * end-to-end test's namespace), so it asks the kernel once, at load, for
 * its attach point's level. Never attached otherwise.
 */
#ifndef __CT_LEVEL_BPF_H
#define __CT_LEVEL_BPF_H

SEC("iter/cgroup")
int ct_cgroup_level(struct bpf_iter__cgroup *ctx)
{
	struct cgroup *cgrp = ctx->cgroup;
	__u32 level;

	if (!cgrp)
		return 0;
	level = cgrp->level;
	bpf_seq_write(ctx->meta->seq, &level, sizeof(level));
	return 0;
}

#endif /* __CT_LEVEL_BPF_H */
