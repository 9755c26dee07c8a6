// Portable kernels: plain C++ for any CPU (ARM, LoongArch, x86 without AVX2). Also the reference
// that the SIMD paths are tested against.
#include <math.h>

#include "iq1s_grid.h"
#include "kernels.h"

// Every ISA's activation layout starts with this one, so all paths see the same int8 activations.
void quantize_portable(const float* x, int n, void* out) {
    uint8_t* p = (uint8_t*)out;
    int8_t* qs = (int8_t*)p;
    float* d = (float*)(p + n);
    int32_t* s16 = (int32_t*)(p + n + (n / 32) * 4);
    for (int b = 0; b < n / 32; b++) {
        float amax = 0.f;
        for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(x[b * 32 + i]));
        float scale = amax / 127.f, inv = amax > 0 ? 127.f / amax : 0.f;
        d[b] = scale;
        for (int h = 0; h < 2; h++) {
            int32_t sum = 0;
            for (int i = 0; i < 16; i++) {
                int v = (int)lrintf(x[b * 32 + h * 16 + i] * inv);
                qs[b * 32 + h * 16 + i] = (int8_t)v;
                sum += v;
            }
            s16[b * 2 + h] = sum;
        }
    }
    quantize_k_portable(x, n, out);
}

void quantize_k_portable(const float* x, int n, void* out) {
    if (n % 256) return;
    ActView v = act_view(out, n);
    int8_t* qk = (int8_t*)v.qk;
    float* dk = (float*)v.dk;
    int16_t* b16 = (int16_t*)v.bk16;
    int16_t* b32 = (int16_t*)v.bk32;
    for (int b = 0; b < n / 256; b++) {
        float amax = 0.f;
        for (int i = 0; i < 256; i++) amax = fmaxf(amax, fabsf(x[b * 256 + i]));
        float inv = amax > 0 ? 127.f / amax : 0.f;
        dk[b] = amax / 127.f;
        for (int g = 0; g < 16; g++) {
            int sum = 0;
            for (int i = 0; i < 16; i++) {
                int q = (int)lrintf(x[b * 256 + g * 16 + i] * inv);
                qk[b * 256 + g * 16 + i] = (int8_t)q;
                sum += q;
            }
            b16[b * 16 + g] = (int16_t)sum;
        }
        for (int g = 0; g < 8; g++) b32[b * 8 + g] = (int16_t)(b16[b * 16 + 2 * g] + b16[b * 16 + 2 * g + 1]);
    }
}

namespace {

uint64_t read_generic(const uint8_t* buf, int64_t bytes) {
    const uint64_t* p = (const uint64_t*)buf;
    uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    for (int64_t i = 0; i + 4 <= bytes / 8; i += 4) {
        a0 ^= p[i]; a1 ^= p[i + 1]; a2 ^= p[i + 2]; a3 ^= p[i + 3];
    }
    return a0 ^ a1 ^ a2 ^ a3;
}

int attend_generic(const float* q, int N, int per_group, int d, const AttnPiece* pieces, int count, int cache_type,
                   int64_t stride, float scale, float* out, float* m, float* l, float* scratch, int) {
    // the portable path: each needed value converted to float as it is read
    auto at = [&](const void* rows, int64_t i) {
        return cache_type == kCacheF16    ? fp16_to_f32(((const uint16_t*)rows)[i])
               : cache_type == kCacheBF16 ? bf16_to_f32(((const uint16_t*)rows)[i])
                                          : ((const float*)rows)[i];
    };
    int S = 0;
    for (int c = 0; c < count; c++) S += pieces[c].n;
    for (int h = 0; h < N; h++) {
        const int64_t off = (h / per_group) * d;
        float* p = scratch + (size_t)h * S;
        float best = -INFINITY, total = 0.f;
        for (int c = 0, s = 0; c < count; c++)
            for (int r = 0; r < pieces[c].n; r++, s++) {
                float dot = 0.f;
                for (int i = 0; i < d; i++) dot += q[(size_t)h * d + i] * at(pieces[c].k, r * stride + off + i);
                p[s] = dot * scale;
                best = fmaxf(best, p[s]);
            }
        float* o = out + (size_t)h * d;
        memset(o, 0, sizeof(float) * d);
        for (int c = 0, s = 0; c < count; c++)
            for (int r = 0; r < pieces[c].n; r++, s++) {
                const float e = expf(p[s] - best);
                total += e;
                for (int i = 0; i < d; i++) o[i] += e * at(pieces[c].v, r * stride + off + i);
            }
        m[h] = best;
        l[h] = total;
    }
    return 1;
}

void silu_mul_generic(float* g, const float* u, int n) {
    for (int i = 0; i < n; i++) g[i] = g[i] / (1.f + expf(-g[i])) * u[i];
}

// ---- one row against one activation -----------------------------------------------------------
float dot_f32(const uint8_t* w, const void* a, int n) {
    const float* x = (const float*)a;
    const float* r = (const float*)w;
    float s = 0;
    for (int i = 0; i < n; i++) s += r[i] * x[i];
    return s;
}
float dot_f16(const uint8_t* w, const void* a, int n) {
    const float* x = (const float*)a;
    const uint16_t* r = (const uint16_t*)w;
    float s = 0;
    for (int i = 0; i < n; i++) s += fp16_to_f32(r[i]) * x[i];
    return s;
}
float dot_bf16(const uint8_t* w, const void* a, int n) {
    const float* x = (const float*)a;
    const uint16_t* r = (const uint16_t*)w;
    float s = 0;
    for (int i = 0; i < n; i++) s += bf16_to_f32(r[i]) * x[i];
    return s;
}

float dot_q8_0(const uint8_t* w, const void* a, int n) {
    ActView av = act_view(a, n);
    const BlockQ8_0* b = (const BlockQ8_0*)w;
    float s = 0;
    for (int i = 0; i < n / 32; i++) {
        int32_t acc = 0;
        for (int j = 0; j < 32; j++) acc += b[i].qs[j] * av.qs[i * 32 + j];
        s += fp16_to_f32(b[i].d) * av.d[i] * (float)acc;
    }
    return s;
}

float dot_q4_0(const uint8_t* w, const void* a, int n) {
    ActView av = act_view(a, n);
    const BlockQ4_0* b = (const BlockQ4_0*)w;
    float s = 0;
    for (int i = 0; i < n / 32; i++) {
        const int8_t* q = av.qs + i * 32;
        int32_t acc = 0;
        for (int j = 0; j < 16; j++) acc += (b[i].qs[j] & 0xF) * q[j] + (b[i].qs[j] >> 4) * q[j + 16];
        acc -= 8 * (av.sum16[2 * i] + av.sum16[2 * i + 1]);
        s += fp16_to_f32(b[i].d) * av.d[i] * (float)acc;
    }
    return s;
}

// Q4_K and Q5_K: sub-block j of 32 weights = d*sc_j*q - dmin*m_j (against per-256 activations).
template <bool kFive>
float dot_qk45(const uint8_t* w, const void* a, int n) {
    ActView av = act_view(a, n);
    const size_t block_bytes = kFive ? sizeof(BlockQ5_K) : sizeof(BlockQ4_K);
    float s = 0;
    for (int i = 0; i < n / 256; i++) {
        const uint8_t* blk = w + i * block_bytes;
        uint16_t dh, dminh;
        memcpy(&dh, blk, 2);
        memcpy(&dminh, blk + 2, 2);
        const uint8_t* scales = blk + 4;
        const uint8_t* qh = kFive ? blk + 16 : nullptr;
        const uint8_t* qs = kFive ? blk + 48 : blk + 16;
        int32_t dot = 0, mins = 0;
        for (int j = 0; j < 8; j++) {
            uint8_t sc, m;
            k_scale_min(scales, j, &sc, &m);
            const int8_t* q = av.qk + i * 256 + j * 32;
            int32_t acc = 0;
            for (int l = 0; l < 32; l++) {
                int v = (qs[(j / 2) * 32 + l] >> (4 * (j & 1))) & 0xF;
                if (kFive) v |= ((qh[l] >> j) & 1) << 4;
                acc += v * q[l];
            }
            dot += sc * acc;
            mins += m * av.bk32[i * 8 + j];
        }
        s += av.dk[i] * (fp16_to_f32(dh) * (float)dot - fp16_to_f32(dminh) * (float)mins);
    }
    return s;
}

float dot_q6_k(const uint8_t* w, const void* a, int n) {
    ActView av = act_view(a, n);
    const BlockQ6_K* b = (const BlockQ6_K*)w;
    float s = 0;
    for (int i = 0; i < n / 256; i++) {
        int32_t dot = 0;
        for (int g = 0; g < 16; g++) {  // 16 groups of 16 weights, one int8 scale each
            int32_t acc = 0;
            for (int l = 0; l < 16; l++) {
                int k = g * 16 + l, h = k / 128, r = k % 128, s4 = r / 32, j = r % 32;
                int lo = (b[i].ql[h * 64 + (s4 & 1) * 32 + j] >> (4 * (s4 >> 1))) & 0xF;
                int hi = (b[i].qh[h * 32 + j] >> (2 * s4)) & 3;
                acc += (lo | (hi << 4)) * av.qk[i * 256 + k];
            }
            dot += b[i].scales[g] * (acc - 32 * av.bk16[i * 16 + g]);
        }
        s += av.dk[i] * fp16_to_f32(b[i].d) * (float)dot;
    }
    return s;
}

float dot_iq1_s(const uint8_t* w, const void* a, int n) {
    ActView av = act_view(a, n);
    const BlockIQ1_S* b = (const BlockIQ1_S*)w;
    float s = 0;
    for (int i = 0; i < n / 256; i++) {
        float d = fp16_to_f32(b[i].d);
        for (int ib = 0; ib < 8; ib++) {
            uint16_t qh = b[i].qh[ib];
            float dl = d * (2 * ((qh >> 12) & 7) + 1);
            float delta = (qh & 0x8000) ? -0.125f : 0.125f;
            const int8_t* q = av.qs + i * 256 + ib * 32;
            int32_t acc = 0;
            for (int l = 0; l < 4; l++) {
                uint64_t g = kIq1sGrid[b[i].qs[ib * 4 + l] | (((qh >> (3 * l)) & 7) << 8)];
                for (int j = 0; j < 8; j++) acc += (int8_t)(g >> (8 * j)) * q[l * 8 + j];
            }
            int blk32 = i * 8 + ib;
            int32_t sum = av.sum16[2 * blk32] + av.sum16[2 * blk32 + 1];
            s += av.d[blk32] * dl * ((float)acc + delta * (float)sum);
        }
    }
    return s;
}

float dot_tq2_0(const uint8_t* w, const void* a, int n) {  // against per-256 activations, as the SIMD path
    ActView av = act_view(a, n);
    const BlockTQ2_0* b = (const BlockTQ2_0*)w;
    float s = 0;
    for (int i = 0; i < n / 256; i++) {
        int32_t acc = 0, sum = 0;
        for (int k = 0; k < 256; k++)  // weight k: byte k % 32 of half k / 128, 2-bit field (k / 32) % 4
            acc += ((b[i].qs[(k / 128) * 32 + k % 32] >> (2 * ((k / 32) % 4))) & 3) * av.qk[i * 256 + k];
        for (int g = 0; g < 8; g++) sum += av.bk32[i * 8 + g];
        s += fp16_to_f32(b[i].d) * av.dk[i] * (float)(acc - sum);  // codes carry +1
    }
    return s;
}

static inline int tq1_digit(uint8_t q, int k) {  // k-th base-3 digit, stored as a fixed-point fraction
    static const uint8_t pow3[5] = {1, 3, 9, 27, 81};
    uint8_t v = (uint8_t)(q * pow3[k]);
    return ((uint16_t)v * 3) >> 8;
}

float dot_tq1_0(const uint8_t* w, const void* a, int n) {  // against per-256 activations, as the SIMD path
    ActView av = act_view(a, n);
    const BlockTQ1_0* b = (const BlockTQ1_0*)w;
    float s = 0;
    for (int i = 0; i < n / 256; i++) {
        int8_t v[256];
        for (int k = 0; k < 5; k++)
            for (int j = 0; j < 32; j++) v[k * 32 + j] = tq1_digit(b[i].qs[j], k);
        for (int k = 0; k < 5; k++)
            for (int j = 0; j < 16; j++) v[160 + k * 16 + j] = tq1_digit(b[i].qs[32 + j], k);
        for (int k = 0; k < 4; k++)
            for (int j = 0; j < 4; j++) v[240 + k * 4 + j] = tq1_digit(b[i].qh[j], k);
        int32_t acc = 0, sum = 0;
        for (int k = 0; k < 256; k++) acc += v[k] * av.qk[i * 256 + k];
        for (int g = 0; g < 8; g++) sum += av.bk32[i * 8 + g];
        s += fp16_to_f32(b[i].d) * av.dk[i] * (float)(acc - sum);  // digits carry +1
    }
    return s;
}

}  // namespace

const RowsFn portable::rows_f32 = rows_by_dot<dot_f32>;
const RowsFn portable::rows_f16 = rows_by_dot<dot_f16>;
const RowsFn portable::rows_bf16 = rows_by_dot<dot_bf16>;
const RowsFn portable::rows_q8_0 = rows_by_dot<dot_q8_0>;
const RowsFn portable::rows_q4_0 = rows_by_dot<dot_q4_0>;
const RowsFn portable::rows_q4_k = rows_by_dot<dot_qk45<false>>;
const RowsFn portable::rows_q5_k = rows_by_dot<dot_qk45<true>>;
const RowsFn portable::rows_q6_k = rows_by_dot<dot_q6_k>;
const RowsFn portable::rows_iq1_s = rows_by_dot<dot_iq1_s>;
const RowsFn portable::rows_tq2_0 = rows_by_dot<dot_tq2_0>;
const RowsFn portable::rows_tq1_0 = rows_by_dot<dot_tq1_0>;
const SiluMulFn portable::silu_mul = silu_mul_generic;
const AttendFn portable::attend = attend_generic;
const ReadFn portable::read = read_generic;

static void to_f16_generic(const float* x, int n, uint16_t* out) {
    for (int i = 0; i < n; i++) out[i] = f32_to_fp16(x[i]);
}
const ToF16Fn portable::to_f16 = to_f16_generic;
