// Portable kernels of the low-bit and older formats (lowbit.h): each decoder's unit is decoded to
// byte codes once per row and call, then dotted in integers with every token's int8 activations
// (per 32, or per 256 for a decoder with kAct256), the float work once per block. Plain C++: the path for ARM and the reference of the
// SIMD ones.
#include "kernels.h"
#include "lowbit_iq2_scalar.h"
#include "lowbit_iq3_scalar.h"
#include "lowbit_kquants_scalar.h"
#include "lowbit_legacy_scalar.h"

namespace {

template <class P>
int rows_decoded(const uint8_t* w, size_t row_bytes, int nrows, const void* const* acts, int ntok, int n,
                 float* out, size_t out_stride) {
    if (n % P::kUnit || n % 32 || (Act256Of<P>::value && n % 256)) {  // unreachable: a row of these formats is whole units (row_bytes)
        for (int t = 0; t < ntok; t++) memset(out + t * out_stride, 0, sizeof(float) * nrows);
        return nrows;
    }
    const int nb = P::kUnit / P::kBlock;
    const bool kAct256 = Act256Of<P>::value;  // per-256 activations (lowbit.h)
    uint8_t codes[P::kUnit];
    float sc[P::kUnit / 16], mn[P::kUnit / 16];
    for (int r = 0; r < nrows; r++) {
        for (int t = 0; t < ntok; t++) out[t * out_stride + r] = 0.f;
        for (int u = 0; u < n / P::kUnit; u++) {
            P::decode(w + (size_t)r * row_bytes + (size_t)u * P::kBytes, codes, sc, mn);
            for (int t = 0; t < ntok; t++) {
                const ActView a = act_view(acts[t], n);
                float s = 0.f;
                for (int b = 0; b < nb; b++) {
                    const int k0 = u * P::kUnit + b * P::kBlock;  // this block's first weight in the row
                    const int8_t* q = kAct256 ? a.qk : a.qs;
                    int32_t dot = 0;
                    for (int i = 0; i < P::kBlock; i++) dot += (int32_t)codes[b * P::kBlock + i] * q[k0 + i];
                    int32_t sum;
                    if (kAct256) sum = P::kBlock == 16 ? a.bk16[k0 / 16] : a.bk32[k0 / 32];
                    else sum = P::kBlock == 16 ? a.sum16[k0 / 16] : a.sum16[k0 / 16] + a.sum16[k0 / 16 + 1];
                    s += (kAct256 ? a.dk[k0 / 256] : a.d[k0 / 32]) * (sc[b] * (float)dot - mn[b] * (float)sum);
                }
                out[t * out_stride + r] += s;
            }
        }
    }
    return nrows;
}

}  // namespace

const RowsFn portable::rows_q4_1 = rows_decoded<PQ4_1>;
const RowsFn portable::rows_q5_0 = rows_decoded<PQ5_0>;
const RowsFn portable::rows_q5_1 = rows_decoded<PQ5_1>;
const RowsFn portable::rows_iq4_nl = rows_decoded<PIQ4_NL>;
const RowsFn portable::rows_q2_k = rows_decoded<PQ2_K>;
const RowsFn portable::rows_q3_k = rows_decoded<PQ3_K>;
const RowsFn portable::rows_iq4_xs = rows_decoded<PIQ4_XS>;
const RowsFn portable::rows_iq2_xxs = rows_decoded<PIQ2_XXS>;
const RowsFn portable::rows_iq2_xs = rows_decoded<PIQ2_XS>;
const RowsFn portable::rows_iq2_s = rows_decoded<PIQ2_S>;
const RowsFn portable::rows_iq3_xxs = rows_decoded<PIQ3_XXS>;
const RowsFn portable::rows_iq3_s = rows_decoded<PIQ3_S>;
const RowsFn portable::rows_iq1_m = rows_decoded<PIQ1_M>;
