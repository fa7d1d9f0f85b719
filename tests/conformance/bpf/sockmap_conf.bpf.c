// SPDX-License-Identifier: MIT
/*
 * skmsg conformance programs: one object, many scenarios.
 *
 * Each program reads what to do from a one-entry array map that the Python
 * runner fills before a scenario (tests/conformance/_bpf.py packs the same
 * layout), and logs what it saw and what its helpers returned, so that the
 * runner can compare the kernel's runs with skmsg's.
 *
 *   msg_verdict    SK_MSG: up to MAX_OPS helper calls (apply, cork, pull, push,
 *                  pop), then a verdict (pass, drop, redirect map/hash, with
 *                  flags); each op and verdict can be limited to a range of runs.
 *   skb_parser     SK_SKB stream parser: returns cfg.parser_len, or skb->len.
 *   skb_verdict    SK_SKB stream verdict (or skb verdict): the same verdict rules.
 *
 * Every field is a __u32 so Python packs the config as an array of u32.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define MAX_OPS 6
#define LOG_RUNS 64
#define NMAPS 4

enum { OP_NONE, OP_APPLY, OP_CORK, OP_PULL, OP_PUSH, OP_POP };
enum { V_NONE, V_PASS, V_DROP, V_REDIR };
enum { RET_HELPER, RET_PASS, RET_DROP };

struct op {
	__u32 code, a, b;
	__u32 from_run, to_run;   /* runs [from_run, to_run) do it; to_run 0 = no end */
	__u32 drop_on_error;      /* bpf_prog4's "if (err) return SK_DROP" */
};

struct verdict {
	__u32 code;
	__u32 map;                /* 0 map_a, 1 map_b, 2 map_c, 3 hash_a */
	__u32 key, flags;
	__u32 ret;                /* RET_*: what to return after a redirect */
	__u32 from_run;           /* v[1] applies from this run on (v[1].code != 0) */
};

struct msg_cfg {
	struct op ops[MAX_OPS];
	struct verdict v[2];
};

struct skb_cfg {
	__u32 parser_len;
	struct verdict v[2];
};

struct msg_log_ent {
	__u32 size_in, size_out;
	__s32 ret[MAX_OPS];
	__u32 verdict;            /* what the program returned */
};

struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, 20);
	__type(key, __u32);
	__type(value, __u64);
} map_a SEC(".maps"), map_b SEC(".maps"), map_c SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 20);
	__type(key, __u32);
	__type(value, __u64);
} hash_a SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u32);
} map_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct msg_cfg);
} msg_cfg_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct skb_cfg);
} skb_cfg_map SEC(".maps");

/* counters: [0] msg runs, [1] skb verdict runs, [2] parser runs */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u32);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LOG_RUNS);
	__type(key, __u32);
	__type(value, struct msg_log_ent);
} msg_log SEC(".maps");

/* skb->len of each verdict run */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LOG_RUNS);
	__type(key, __u32);
	__type(value, __u32);
} skb_log SEC(".maps");

static __always_inline __u32 count(__u32 idx)
{
	__u32 *c = bpf_map_lookup_elem(&counters, &idx);

	if (!c)
		return 0;
	return __sync_fetch_and_add(c, 1);
}

static __always_inline const struct verdict *pick(const struct verdict *v, __u32 run)
{
	if (v[1].code != V_NONE && run >= v[1].from_run)
		return &v[1];
	return &v[0];
}

static __always_inline int finish(const struct verdict *v, int redir)
{
	if (v->code == V_DROP)
		return SK_DROP;
	if (v->code != V_REDIR)
		return SK_PASS;
	if (v->ret == RET_PASS)
		return SK_PASS;
	if (v->ret == RET_DROP)
		return SK_DROP;
	return redir;
}

SEC("sk_msg")
int msg_verdict(struct sk_msg_md *msg)
{
	__u32 zero = 0, run = count(0);
	struct msg_cfg *cfg = bpf_map_lookup_elem(&msg_cfg_map, &zero);
	struct msg_log_ent ent = {};
	const struct verdict *v;
	int i, ret, verdict, redir = SK_DROP;

	if (!cfg)
		return SK_DROP;
	ent.size_in = msg->size;
	for (i = 0; i < MAX_OPS; i++) {
		const struct op *op = &cfg->ops[i];

		if (op->code == OP_NONE || run < op->from_run ||
		    (op->to_run && run >= op->to_run))
			continue;
		switch (op->code) {
		case OP_APPLY:
			ret = bpf_msg_apply_bytes(msg, op->a);
			break;
		case OP_CORK:
			ret = bpf_msg_cork_bytes(msg, op->a);
			break;
		case OP_PULL:
			ret = bpf_msg_pull_data(msg, op->a, op->b, 0);
			break;
		case OP_PUSH:
			ret = bpf_msg_push_data(msg, op->a, op->b, 0);
			break;
		case OP_POP:
			ret = bpf_msg_pop_data(msg, op->a, op->b, 0);
			break;
		default:
			ret = -1;
		}
		ent.ret[i] = ret;
		if (ret && op->drop_on_error) {
			verdict = SK_DROP;
			goto out;
		}
	}
	v = pick(cfg->v, run);
	if (v->code == V_REDIR) {
		__u32 key = v->key;

		switch (v->map) {
		case 0:
			redir = bpf_msg_redirect_map(msg, &map_a, key, v->flags);
			break;
		case 1:
			redir = bpf_msg_redirect_map(msg, &map_b, key, v->flags);
			break;
		case 2:
			redir = bpf_msg_redirect_map(msg, &map_c, key, v->flags);
			break;
		default:
			redir = bpf_msg_redirect_hash(msg, &hash_a, &key, v->flags);
		}
	}
	verdict = finish(v, redir);
out:
	ent.size_out = msg->size;
	ent.verdict = verdict;
	if (run < LOG_RUNS)
		bpf_map_update_elem(&msg_log, &run, &ent, BPF_ANY);
	return verdict;
}

SEC("sk_skb/stream_parser")
int skb_parser(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct skb_cfg *cfg = bpf_map_lookup_elem(&skb_cfg_map, &zero);

	count(2);
	if (cfg && cfg->parser_len)
		return cfg->parser_len;
	return skb->len;
}

static __always_inline int skb_verdict_common(struct __sk_buff *skb)
{
	__u32 zero = 0, run = count(1), len = skb->len;
	struct skb_cfg *cfg = bpf_map_lookup_elem(&skb_cfg_map, &zero);
	const struct verdict *v;
	int redir = SK_DROP;

	if (run < LOG_RUNS)
		bpf_map_update_elem(&skb_log, &run, &len, BPF_ANY);
	if (!cfg)
		return SK_DROP;
	v = pick(cfg->v, run);
	if (v->code == V_REDIR) {
		__u32 key = v->key;

		switch (v->map) {
		case 0:
			redir = bpf_sk_redirect_map(skb, &map_a, key, v->flags);
			break;
		case 1:
			redir = bpf_sk_redirect_map(skb, &map_b, key, v->flags);
			break;
		case 2:
			redir = bpf_sk_redirect_map(skb, &map_c, key, v->flags);
			break;
		default:
			redir = bpf_sk_redirect_hash(skb, &hash_a, &key, v->flags);
		}
	}
	return finish(v, redir);
}

SEC("sk_skb/stream_verdict")
int skb_verdict(struct __sk_buff *skb)
{
	return skb_verdict_common(skb);
}

SEC("sk_skb")
int skb_verdict_plain(struct __sk_buff *skb)
{
	return skb_verdict_common(skb);
}

char _license[] SEC("license") = "GPL";
