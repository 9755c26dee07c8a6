// The kernel table the jobs call (MoE, linear, attention): dispatch.cpp fills it for the CPU's ISA,
// or the one hymoe_force_isa names.
#pragma once
#include "common.h"

enum { kMaxSteps = 8 };
struct RowsStep {
    RowsFn fn;  // null: the end of the list
    int from;   // the fewest tokens per call this kernel is given
};
struct KernelTable {
    RowsStep rows[FMT_SLOTS][kMaxSteps];  // per format: kernels in the order they are tried
    AttendFn attend[4];                   // likewise, null-terminated
    QuantizeFn quantize;
    ActBytesFn act_bytes;
    SiluMulFn silu_mul;
    ReadFn read;
    ToF16Fn to_f16;
    const char* name;
};

const KernelTable& kernels();  // the table in use

static inline bool has_format(const KernelTable& kt, int fmt) {
    return fmt >= 0 && fmt < FMT_SLOTS && kt.rows[fmt][0].fn != nullptr;
}

// Rows [0, nrows) of w against ntok activations (RowsFn): each kernel in the list takes what it
// can from the front and leaves the rest to the next; the last (portable) one takes every shape.
static inline void run_rows(const KernelTable& kt, int fmt, const uint8_t* w, size_t row_bytes, int nrows,
                            const void* const* acts, int ntok, int n, float* out, size_t out_stride) {
    int done = 0;
    for (const RowsStep* s = kt.rows[fmt]; done < nrows; s++)
        if (ntok >= s->from)
            done += s->fn(w + (size_t)done * row_bytes, row_bytes, nrows - done, acts, ntok, n, out + done, out_stride);
}

// One call's attention (AttendFn) by the first kernel that takes the head width.
static inline void run_attend(const KernelTable& kt, const float* q, int N, int per_group, int d,
                              const AttnPiece* pieces, int count, int cache_type, int64_t stride, float scale, float* out,
                              float* m, float* l, float* scratch, int ahead_lines) {
    for (const AttendFn* a = kt.attend; *a; a++)
        if ((*a)(q, N, per_group, d, pieces, count, cache_type, stride, scale, out, m, l, scratch, ahead_lines)) return;
}
