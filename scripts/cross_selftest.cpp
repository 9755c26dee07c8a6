// The native kernels' self-test on another CPU (scripts/cross_check.py builds it with the library's
// sources for the target and runs it under qemu-user): for every case of a file that Python wrote
// (a format's random blocks, activations, and gguf-py's dequantized weights), every ISA level of
// this CPU computes the rows through hymoe_rows, and each result is checked
//   - against the float reference sum(w * x) from gguf-py's values, within 2e-5 of sum |w x| (the
//     activations are ones int8 quantization keeps exactly), and
//   - against the portable level's result, within 1e-5 of sum |w x|.
// Prints one line per case and level; exit status 1 when any check fails.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <vector>

extern "C" {
int hymoe_isa();
const char* hymoe_isa_name();
void hymoe_force_isa(int isa);
int hymoe_has_format(int fmt);
int hymoe_rows(int fmt, const uint8_t* w, int64_t w_bytes, int nrows, int n, const float* x, int64_t x_len,
               int ntok, float* out, int64_t out_len);
}

namespace {

struct Case {
    char name[16];
    int32_t fmt, rows, n, ntok;
    std::vector<uint8_t> w;
    std::vector<float> x, deq;  // [ntok, n], [rows, n]
};

bool read_cases(const char* path, std::vector<Case>& cases) {
    FILE* f = fopen(path, "rb");
    if (!f) return false;
    char magic[4];
    int32_t count = 0;
    bool ok = fread(magic, 1, 4, f) == 4 && memcmp(magic, "HYST", 4) == 0 && fread(&count, 4, 1, f) == 1;
    for (int i = 0; ok && i < count; i++) {
        Case c;
        int64_t w_bytes = 0;
        ok = fread(c.name, 1, 16, f) == 16 && fread(&c.fmt, 4, 1, f) == 1 && fread(&c.rows, 4, 1, f) == 1 &&
             fread(&c.n, 4, 1, f) == 1 && fread(&c.ntok, 4, 1, f) == 1 && fread(&w_bytes, 8, 1, f) == 1;
        if (!ok) break;
        c.name[15] = 0;
        c.w.resize(w_bytes);
        c.x.resize((size_t)c.ntok * c.n);
        c.deq.resize((size_t)c.rows * c.n);
        ok = fread(c.w.data(), 1, w_bytes, f) == (size_t)w_bytes &&
             fread(c.x.data(), 4, c.x.size(), f) == c.x.size() && fread(c.deq.data(), 4, c.deq.size(), f) == c.deq.size();
        cases.push_back(std::move(c));
    }
    fclose(f);
    return ok;
}

// The reference and the scale of the sum (sum |w x|). The activations are ones int8 quantization
// keeps exactly (cross_check.py), so a kernel differs from it by float rounding only.
void reference(const Case& c, int t, int r, double* ref, double* mag) {
    const float* x = &c.x[(size_t)t * c.n];
    const float* w = &c.deq[(size_t)r * c.n];
    *ref = *mag = 0;
    for (int i = 0; i < c.n; i++) {
        *ref += (double)w[i] * x[i];
        *mag += fabs((double)w[i] * x[i]);
    }
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<Case> cases;
    if (argc != 2 || !read_cases(argv[1], cases)) {
        fprintf(stderr, "usage: %s CASES (a file written by scripts/cross_check.py)\n", argv[0]);
        return 2;
    }
    const int top = hymoe_isa();
    int failures = 0;
    for (const Case& c : cases) {
        std::vector<float> portable;
        for (int isa = 0; isa <= top; isa++) {
            hymoe_force_isa(isa);
            std::vector<float> out((size_t)c.ntok * c.rows, NAN);
            int rc = hymoe_rows(c.fmt, c.w.data(), (int64_t)c.w.size(), c.rows, c.n, c.x.data(), (int64_t)c.x.size(),
                                c.ntok, out.data(), (int64_t)out.size());
            double worst = 0, worst_level = 0;  // error over its tolerance: at most 1 passes
            for (int t = 0; rc == 0 && t < c.ntok; t++) {
                for (int r = 0; r < c.rows; r++) {
                    double ref, mag;
                    reference(c, t, r, &ref, &mag);
                    const double got = out[(size_t)t * c.rows + r];
                    worst = fmax(worst, isfinite(got) ? fabs(got - ref) / (2e-5 * mag + 1e-30) : INFINITY);
                    if (isa > 0) {
                        const double p = portable[(size_t)t * c.rows + r];
                        worst_level = fmax(worst_level, isfinite(got) ? fabs(got - p) / (1e-5 * mag + 1e-30) : INFINITY);
                    }
                }
            }
            if (isa == 0) portable = out;
            const bool ok = rc == 0 && worst <= 1.0 && worst_level <= 1.0;
            failures += !ok;
            printf("%-8s %-18s rows %d n %d tokens %d: rc %d, error/bound %.3f, against portable %.3f %s\n", c.name,
                   hymoe_isa_name(), c.rows, c.n, c.ntok, rc, worst, worst_level, ok ? "ok" : "FAILED");
        }
    }
    printf("%zu cases, %d levels, %d failed\n", cases.size(), top + 1, failures);
    return failures ? 1 : 0;
}
