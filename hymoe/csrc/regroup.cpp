// Q4_K regrouped at load (Q4_K_G4, common.h): the copy the AVX512 kernels stream, and the way back
// for a table without its kernels.
//
// Why: at one token the Q4_K kernel takes 4 blocks at a time (kq45_groups.h). From the file's layout
// it gathers their 4 heads with 4 loads and 3 inserts, regroups each block's codes with 2 shuffles,
// and 6 of its 8 code loads a group cross a cache line (blocks are 144 bytes). From Q4_K_G4 the heads
// are one aligned load and the codes two, already in order. Zen 4, one thread, in L2: 4.22 -> 3.76
// ns a block; two threads streaming 300 MB from DRAM: 10.6 -> 9.1 ns (docs/dense.md).
#include <string.h>

#include <algorithm>
#include <vector>

#include "dispatch.h"
#include "kernels.h"

namespace {

// One block of Q4_K_G4, at its address as if the blocks lay back to back, into the file's 144 bytes.
void ungroup_block(const uint8_t* p, uint8_t* out) {
    const uint8_t* xy = g4_codes(p);
    memcpy(out, g4_head(p), 16);
    for (int j = 0; j < 4; j++) {
        memcpy(out + 16 + 32 * j, xy + 16 * j, 16);
        memcpy(out + 32 + 32 * j, xy + 64 + 16 * j, 16);
    }
}

// The rows back in Q4_K's layout, 64 KiB at a time, then the table's Q4_K kernels: Q4_K_G4 on a
// table without kernels of its own (a narrower ISA forced after the weights were regrouped).
int ungrouped_rows(const uint8_t* w, size_t row_bytes, int nrows, const void* const* acts, int ntok, int n,
                   float* out, size_t out_stride) {
    static thread_local std::vector<uint8_t> rows;
    const int step = std::max<int>(1, (int)(65536 / row_bytes));
    for (int r = 0; r < nrows; r += step) {
        const int k = std::min(step, nrows - r);
        rows.resize((size_t)k * row_bytes);
        for (size_t b = 0; b < (size_t)k * row_bytes / sizeof(BlockQ4_K); b++)
            ungroup_block(w + (size_t)r * row_bytes + b * sizeof(BlockQ4_K), rows.data() + b * sizeof(BlockQ4_K));
        run_rows(kernels(), Q4_K, rows.data(), row_bytes, k, acts, ntok, n, out + r, out_stride);
    }
    return nrows;
}

}  // namespace

const RowsFn portable::rows_q4_k_g4 = ungrouped_rows;

extern "C" {

// 1 where regrouping `fmt` pays: the table in use has Q4_K_G4 kernels of its own (AVX512), and
// Tuning::regroup_q4_k is on (by default where the CPU splits 512-bit instructions: common.h); else 0.
__attribute__((visibility("default"))) int hymoe_regroups(int fmt) {
    return fmt == Q4_K && g_tuning.regroup_q4_k && kernels().rows[Q4_K_G4][0].fn != ungrouped_rows;
}

// src: `bytes` of Q4_K blocks, whole groups of 4 (a multiple of 576) -> dst (dst_bytes long) in
// Q4_K_G4, dst at a multiple of 576 (the groups' addresses are part of the layout); dst may be src
// (each group is read whole before it is written). Returns Q4_K_G4, or -1 (another format) or -4
// (null, sizes or alignment).
__attribute__((visibility("default"))) int hymoe_regroup(int fmt, const uint8_t* src, int64_t bytes, uint8_t* dst,
                                                         int64_t dst_bytes) {
    if (fmt != Q4_K) return -1;
    if (!src || !dst || bytes < 0 || bytes % kG4Bytes || dst_bytes < bytes || (uintptr_t)dst % kG4Bytes) return -4;
    uint8_t s[kG4Bytes];
    for (int64_t g = 0; g < bytes; g += kG4Bytes) {
        memcpy(s, src + g, kG4Bytes);
        for (int k = 0; k < 4; k++) {  // block k: its head and codes where common.h's g4_ helpers find them
            const uint8_t *b = s + k * sizeof(BlockQ4_K), *at = dst + g + k * sizeof(BlockQ4_K);
            uint8_t* xy = (uint8_t*)g4_codes(at);
            memcpy((uint8_t*)g4_head(at), b, 16);
            for (int j = 0; j < 4; j++) {  // X: the pieces 2j, Y: 2j + 1 (ungroup_block's inverse)
                memcpy(xy + 16 * j, b + 16 + 32 * j, 16);
                memcpy(xy + 64 + 16 * j, b + 32 + 32 * j, 16);
            }
        }
    }
    return Q4_K_G4;
}

}  // extern "C"
