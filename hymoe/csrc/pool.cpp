#include "pool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>

#ifdef __linux__
#include <pthread.h>
#include <sched.h>
#endif

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
static inline void cpu_relax() { _mm_pause(); }
#else
static inline void cpu_relax() { std::this_thread::yield(); }
#endif

// Within a job, helpers spin between phases (they follow each other within microseconds); between
// jobs they sleep at once, so they never compete with torch's own threads for the cores while
// the dense part of the layer runs.
static const int kSpins = 100000;
// A spinning thread yields every so often (256 pauses, ~6 us): where two of the job's threads share
// a core (a scheduler that packs threads onto few vCPUs, or more threads than cores) the one it
// waits for then runs, instead of waiting for the spinner's time slice to end.
static const int kYieldSpins = 256;

// The CPUs to pin pool thread t to: the process's allowed CPUs, one per physical core first (so
// two threads never share a core's SMT siblings while a core is free). Empty: do not pin (not
// Linux, HYMOE_PIN=0, or more threads than allowed CPUs, where the scheduler must share them out).
// Pinned, a helper that wakes after an idle spell runs on its own core; unpinned, a scheduler
// that packs threads may put it on the caller's core (a qwen3 Q4_K layer at batch 1 after 10 ms
// idle: about 1.35 ms against 0.97 pinned).
static std::vector<int> pin_cpus(int threads) {
    std::vector<int> cpus;
#ifdef __linux__
    const char* env = getenv("HYMOE_PIN");
    if (env && strcmp(env, "0") == 0) return cpus;
    cpu_set_t allowed;
    if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0) return cpus;
    std::vector<int> siblings;  // SMT siblings after the first thread of each core
    for (int c = 0; c < CPU_SETSIZE; c++) {
        if (!CPU_ISSET(c, &allowed)) continue;
        char path[96];
        snprintf(path, sizeof(path), "/sys/devices/system/cpu/cpu%d/topology/thread_siblings_list", c);
        int first = c;
        if (FILE* f = fopen(path, "r")) {
            if (fscanf(f, "%d", &first) != 1) first = c;
            fclose(f);
        }
        (first == c ? cpus : siblings).push_back(c);
    }
    cpus.insert(cpus.end(), siblings.begin(), siblings.end());
    if ((int)cpus.size() < threads) cpus.clear();
#else
    (void)threads;
#endif
    return cpus;
}

static void pin_self(const std::vector<int>& cpus, int thread) {
#ifdef __linux__
    if (cpus.empty()) return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpus[thread], &set);
    pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
#else
    (void)cpus, (void)thread;
#endif
}

// Real NUMA nodes: thread t of node k (the i-th of its group) on CPU i of that node's list, round robin.
static std::vector<int> node_pin_cpus(int threads, int nodes, const std::vector<std::vector<int>>& node_cpus) {
    std::vector<int> cpus(threads, -1);
    for (int t = 0, first = 0; t < threads; t++) {
        const int k = t * nodes / threads;
        if (t == 0 || (t - 1) * nodes / threads != k) first = t;
        if (k >= (int)node_cpus.size() || node_cpus[k].empty()) return {};
        cpus[t] = node_cpus[k][(t - first) % node_cpus[k].size()];
    }
    return cpus;
}

// The node of the calling thread in the phase it works on (for next_unit's guess).
static thread_local int tl_node = 0;

Pool::Pool(int num_threads, int num_nodes, const std::vector<std::vector<int>>& real_node_cpus)
    : num_threads_(num_threads < 1 ? 1 : num_threads) {
    num_nodes_ = std::max(1, std::min(std::min(num_nodes, (int)kMaxNodes), num_threads_));
    for (auto& s : node_state_) s = 0;
    // The pool's own threads only: thread 0 is the caller when a job runs in the calling thread
    // (pool.run), and the caller's placement is its own business; the driver stands in for it in
    // async jobs.
    const std::vector<int> cpus = real_node_cpus.empty() ? pin_cpus(num_threads_)
                                                         : node_pin_cpus(num_threads_, num_nodes_, real_node_cpus);
    threads_.emplace_back([this, cpus] {
        pin_self(cpus, 0);
        driver_loop();
    });
    for (int t = 1; t < num_threads_; t++)
        threads_.emplace_back([this, t, cpus] {
            pin_self(cpus, t);
            helper_loop(t);
        });
}

Pool::~Pool() {
    {
        std::lock_guard<std::mutex> lock(job_mutex_);
        is_stopping_ = true;
    }
    job_cv_.notify_all();
    {
        std::lock_guard<std::mutex> lock(phase_mutex_);
        state_ += 1ull << 32;
    }
    phase_cv_.notify_all();
    for (auto& th : threads_) th.join();
}

void Pool::submit(std::function<void()> job) {
    sync();  // one job at a time
    std::lock_guard<std::mutex> lock(job_mutex_);
    job_ = std::move(job);
    has_job_ = true;
    is_job_done_ = false;
    job_cv_.notify_all();
}

void Pool::sync() {
    std::unique_lock<std::mutex> lock(job_mutex_);
    job_cv_.wait(lock, [this] { return is_job_done_; });
}

bool Pool::is_done() {
    std::lock_guard<std::mutex> lock(job_mutex_);
    return is_job_done_;
}

void Pool::run(const std::function<void()>& job) {
    sync();
    in_job_ = true;
    job();
    in_job_ = linger_;
}

void Pool::wake() {
    if (num_threads_ == 1) return;
    in_job_ = true;  // helpers spin, not sleep, once awake
    {
        std::lock_guard<std::mutex> lock(phase_mutex_);
        wake_seq_++;
    }
    phase_cv_.notify_all();
}

void Pool::driver_loop() {
    for (;;) {
        std::function<void()> job;
        {
            std::unique_lock<std::mutex> lock(job_mutex_);
            job_cv_.wait(lock, [this] { return has_job_ || is_stopping_; });
            if (is_stopping_) return;
            job = std::move(job_);
            has_job_ = false;
        }
        in_job_ = true;
        job();
        in_job_ = false;
        {
            std::lock_guard<std::mutex> lock(job_mutex_);
            is_job_done_ = true;
        }
        job_cv_.notify_all();
    }
}

// A unit of `node`'s range in phase `generation`, or false when it has none left (or the phase is over).
bool Pool::claim(int node, uint32_t generation, int* unit) {
    for (;;) {
        uint64_t s = node_state_[node].load();
        if ((uint32_t)(s >> 32) != generation || (uint32_t)s >= (uint32_t)node_end_[node]) return false;
        if (node_state_[node].compare_exchange_weak(s, s + 1)) {
            *unit = (int)(uint32_t)s;
            return true;
        }
    }
}

void Pool::work(int thread, uint32_t generation) {
    const int ranges = ranges_.load(std::memory_order_relaxed);  // a later phase's: its claims fail
    const int home = thread * ranges / num_threads_;
    for (int i = 0; i < ranges; i++) {  // its own range's units, then the others' (their tails)
        const int node = (home + i) % ranges;
        tl_node = node;
        for (int unit; claim(node, generation, &unit);) {
            (*fn_)(unit, thread);
            units_done_++;
        }
    }
    tl_node = home;
}

int Pool::next_unit() const { return (int)(uint32_t)node_state_[tl_node].load(std::memory_order_relaxed); }

void Pool::parallel_for(int num_units, const UnitFn& fn, const int* node_first, bool by_thread) {
    if (num_units <= 0) return;
    by_thread = by_thread && num_nodes_ == 1 && !node_first && num_units >= num_threads_ && num_threads_ > 1 &&
                num_threads_ <= kMaxRanges;
    // Close the previous phase under a generation of its own (no units), so that no helper can pair
    // the old generation with the new function, unit count or ranges; then open the new one.
    uint32_t generation = (uint32_t)(state_.load() >> 32) + 2;
    state_ = ((uint64_t)(generation - 1) << 32) | 0xffffffffu;
    const int ranges = by_thread ? num_threads_ : num_nodes_, old = ranges_.load();
    for (int k = 0; k < std::max(ranges, old); k++) node_state_[k] = ((uint64_t)(generation - 1) << 32) | 0xffffffffu;
    ranges_ = ranges;
    fn_ = &fn;
    num_units_ = num_units;
    units_done_ = 0;
    auto first_of = [&](int k) {  // k in [0, ranges]; without ranges every thread takes node 0's, the whole phase
        return by_thread ? (int)((int64_t)k * num_units / ranges) : node_first ? node_first[k] : k == 0 ? 0 : num_units;
    };
    for (int k = 0; k < ranges; k++) {
        node_end_[k] = first_of(k + 1);
        node_state_[k] = ((uint64_t)generation << 32) | (uint32_t)first_of(k);
    }
    {
        std::lock_guard<std::mutex> lock(phase_mutex_);
        state_ = (uint64_t)generation << 32;  // the new phase
    }
    if (num_threads_ > 1) phase_cv_.notify_all();
    work(0, generation);
    for (int spins = 1; units_done_.load() < num_units; spins++) {
        cpu_relax();
        if (spins % kYieldSpins == 0) std::this_thread::yield();
    }
}

void Pool::helper_loop(int thread) {
    uint32_t seen = 0;
    uint64_t woken = 0;
    for (;;) {
        int spins = 0;
        while ((uint32_t)(state_.load() >> 32) == seen && in_job_.load() && spins < kSpins) {
            cpu_relax();
            if (++spins % kYieldSpins == 0) std::this_thread::yield();
        }
        if ((uint32_t)(state_.load() >> 32) == seen) {
            std::unique_lock<std::mutex> lock(phase_mutex_);
            phase_cv_.wait(lock, [&] { return (uint32_t)(state_.load() >> 32) != seen || wake_seq_ != woken; });
            woken = wake_seq_;
        }
        {
            std::lock_guard<std::mutex> lock(job_mutex_);
            if (is_stopping_) return;
        }
        if ((uint32_t)(state_.load() >> 32) == seen) continue;  // woken ahead of a job: spin until it starts
        seen = (uint32_t)(state_.load() >> 32);
        work(thread, seen);
    }
}
