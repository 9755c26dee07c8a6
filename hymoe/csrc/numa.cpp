// NUMA nodes from sysfs, the engine over them, and the placing of expert rows on their nodes (numa.h).
#include "numa.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#ifdef __linux__
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace {

// "0-3,8,10-11" -> its CPUs
std::vector<int> parse_cpulist(const char* text) {
    std::vector<int> cpus;
    for (const char* p = text; *p && *p != '\n';) {
        int a = 0, b = 0, n = 0;
        if (sscanf(p, "%d-%d%n", &a, &b, &n) == 2) {
        } else if (sscanf(p, "%d%n", &a, &n) == 1) {
            b = a;
        } else {
            break;
        }
        for (int c = a; c <= b; c++) cpus.push_back(c);
        p += n;
        if (*p == ',') p++;
    }
    return cpus;
}

}  // namespace

std::vector<NumaNode> numa_nodes() {
    std::vector<NumaNode> nodes;
#ifdef __linux__
    cpu_set_t allowed;
    if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0) return nodes;
    for (int id = 0; id < 1024; id++) {
        char path[96], text[4096];
        snprintf(path, sizeof(path), "/sys/devices/system/node/node%d/cpulist", id);
        FILE* f = fopen(path, "r");
        if (!f) {
            if (id > 0 && nodes.empty()) break;
            continue;  // node ids may have gaps
        }
        const bool ok = fgets(text, sizeof(text), f) != nullptr;
        fclose(f);
        NumaNode node{id, {}};
        for (int c : ok ? parse_cpulist(text) : std::vector<int>())
            if (c < CPU_SETSIZE && CPU_ISSET(c, &allowed)) node.cpus.push_back(c);
        if (!node.cpus.empty()) nodes.push_back(node);
    }
#endif
    return nodes;
}

extern "C" {

// Nodes of this machine with CPUs the process may use (0 where the kernel does not say).
__attribute__((visibility("default"))) int hymoe_numa_nodes() { return (int)numa_nodes().size(); }

// Binds the pages of rows [first, end) of each expert, for each node's share (node_first_row), to
// that node of this machine (the i-th node with CPUs) and moves those already present: experts
// matrices of `experts` x stride bytes from base, rows of row_bytes. 0, or the errno of mbind.
__attribute__((visibility("default"))) int hymoe_numa_bind_rows(const uint8_t* base, int experts, int64_t stride,
                                                                int rows, int64_t row_bytes, int nodes) {
#ifdef __linux__
    const std::vector<NumaNode> real = numa_nodes();
    if ((int)real.size() < nodes) return EINVAL;
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    for (int e = 0; e < experts; e++) {
        for (int k = 0; k < nodes; k++) {
            uintptr_t lo = (uintptr_t)(base + e * stride + node_first_row(rows, k, nodes) * row_bytes);
            uintptr_t hi = (uintptr_t)(base + e * stride + node_first_row(rows, k + 1, nodes) * row_bytes);
            lo &= ~(page - 1);  // a page shared by two shares goes to the later one
            hi = (hi + page - 1) & ~(page - 1);
            if (hi <= lo) continue;
            unsigned long mask[16] = {0};
            const int id = real[k].id;
            if (id >= (int)(sizeof(mask) * 8)) return EINVAL;
            mask[id / (8 * sizeof(unsigned long))] |= 1ul << (id % (8 * sizeof(unsigned long)));
            const int kBind = 2, kMove = 1 << 1;  // MPOL_BIND, MPOL_MF_MOVE (linux/mempolicy.h)
            if (syscall(SYS_mbind, (void*)lo, hi - lo, kBind, mask, sizeof(mask) * 8, kMove) != 0) return errno;
        }
    }
    return 0;
#else
    (void)base, (void)experts, (void)stride, (void)rows, (void)row_bytes, (void)nodes;
    return ENOSYS;
#endif
}

}  // extern "C"
