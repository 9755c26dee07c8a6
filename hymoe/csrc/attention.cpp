// Grouped-query attention for steps of a few tokens per row (decode) on the CPU, in one call on the
// engine's pool: per-head q/k RMSNorm, rotary embedding, the new keys and values written into the
// cache, and attention over each row's cached positions. In torch this was ~30 small operations
// per layer, whose fixed costs outweighed the arithmetic at one token.
#include "attention.h"

#include <math.h>

#include <algorithm>
#include <vector>

namespace {

// x [D] <- rmsnorm(x) * w, as the reference: normalise in float32, then scale
void rms_norm(float* x, const float* w, int d, float eps) {
    float ss = 0.f;
    for (int i = 0; i < d; i++) ss += x[i] * x[i];
    const float r = 1.f / sqrtf(ss / d + eps);
    for (int i = 0; i < d; i++) x[i] = x[i] * r * w[i];
}

// rotate x [D] by the position's cos/sin [D/2]: halves (x_i, x_{i+D/2}) or adjacent pairs
// (x_2i, x_2i+1), the pairs' results stored de-interleaved as hymoe's torch path does
void rope(float* x, const float* cos, const float* sin, int d, bool interleaved, float* tmp) {
    const int h = d / 2;
    for (int i = 0; i < h; i++) {
        const float a = interleaved ? x[2 * i] : x[i], b = interleaved ? x[2 * i + 1] : x[i + h];
        tmp[i] = a * cos[i] - b * sin[i];
        tmp[i + h] = b * cos[i] + a * sin[i];
    }
    memcpy(x, tmp, sizeof(float) * d);
}

}  // namespace

int gqa_check(const GqaArgs& a) {
    if (a.num_rows < 1 || a.tokens < 1 || a.heads < 1 || a.kv_heads < 1 || a.heads % a.kv_heads) return -1;
    if (a.head_dim < 2 || a.head_dim % 2 || a.head_dim > 1024 || a.kv_len < 1 || a.kv_len > a.max_len + 1) return -1;
    for (int b = 0; b < a.num_rows; b++) {
        const int64_t slot = a.slots ? a.slots[b] : b;
        if (slot < 0 || slot >= a.num_slots) return -2;
        for (int t = 0; t < a.tokens; t++) {
            const int64_t pos = a.positions[b * a.tokens + t];
            if (pos < 0 || pos > a.max_len) return -2;  // max_len: the scratch column of padding
        }
    }
    return 0;
}

void gqa_run(const GqaArgs& a, const KernelTable& kt, Pool& pool, std::vector<float>& scratch) {
    const int B = a.num_rows, T = a.tokens, N = a.heads, G = a.kv_heads, D = a.head_dim;
    const int BT = B * T, per_group = N / G;
    const int64_t pos_stride = (int64_t)G * D, slot_stride = (int64_t)(a.max_len + 1) * pos_stride;
    scratch.resize((size_t)BT * N * D);
    float* q_all = scratch.data();  // [BT, N, D]: the queries after norm and rotation

    // phase 1, per token: queries normalised and rotated; keys normalised, rotated and stored;
    // values stored
    pool.parallel_for(BT, [&](int bt, int) {
        const int b = bt / T;
        const int64_t slot = a.slots ? a.slots[b] : b, pos = a.positions[bt];
        const float *cos = a.cos + (size_t)bt * (D / 2), *sin = a.sin + (size_t)bt * (D / 2);
        float tmp[1024];
        float* k_dst = a.k_cache + slot * slot_stride + pos * pos_stride;
        float* v_dst = a.v_cache + slot * slot_stride + pos * pos_stride;
        for (int n = 0; n < N; n++) {
            float* q = q_all + ((size_t)bt * N + n) * D;
            memcpy(q, a.q + (size_t)bt * a.q_stride + (size_t)n * D, sizeof(float) * D);
            if (a.q_norm) rms_norm(q, a.q_norm, D, a.eps);
            rope(q, cos, sin, D, a.is_interleaved, tmp);
        }
        for (int g = 0; g < G; g++) {
            float* k = k_dst + (size_t)g * D;
            memcpy(k, a.k + (size_t)bt * a.k_stride + (size_t)g * D, sizeof(float) * D);
            if (a.k_norm) rms_norm(k, a.k_norm, D, a.eps);
            rope(k, cos, sin, D, a.is_interleaved, tmp);
            memcpy(v_dst + (size_t)g * D, a.v + (size_t)bt * a.v_stride + (size_t)g * D, sizeof(float) * D);
        }
    });

    // phase 2, per (token, kv head): its query heads against the positions it may attend, one run:
    // causal, and within the sliding window if any (a padding row, past kv_len, attends anywhere)
    pool.parallel_for(BT * G, [&](int unit, int) {
        const int bt = unit / G, g = unit % G, b = bt / T;
        const int64_t slot = a.slots ? a.slots[b] : b, pos = a.positions[bt];
        const int64_t hi = std::min<int64_t>(pos, a.kv_len - 1);
        const int64_t lo = a.window > 0 && pos < a.kv_len ? std::max<int64_t>(0, pos - a.window + 1) : 0;
        const float* keys = a.k_cache + slot * slot_stride + lo * pos_stride + (size_t)g * D;
        const float* values = a.v_cache + slot * slot_stride + lo * pos_stride + (size_t)g * D;
        static thread_local std::vector<float> probs;
        probs.resize((size_t)per_group * (hi - lo + 1));
        kt.attend(q_all + ((size_t)bt * N + (size_t)g * per_group) * D, per_group, D, keys, values, pos_stride,
                  (int)(hi - lo + 1), a.scale, a.out + (size_t)bt * N * D + (size_t)g * per_group * D, probs.data());
    });
}
