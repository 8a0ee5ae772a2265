// core/thread_pool.hpp — the library's own worker pool (no OpenMP: PyTorch ships its own
// runtime, and two in one process fight over cores).
#pragma once

#include <cstdint>
#include <functional>

namespace nybble::core {

// Calls fn(begin, end) over [0, n) in chunks of at least `grain` items, on up to
// get_num_threads() threads (the caller's included), and returns when all are done. The first
// exception thrown by fn is rethrown here. Nested calls run serially.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

void set_num_threads(int n);
int num_threads();

}  // namespace nybble::core
