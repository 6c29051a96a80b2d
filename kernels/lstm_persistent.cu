// The persistent LSTM layer of lstm_persistent.h. One block of 8 warps per multiprocessor; a group of
// `ctas` blocks holds W_hh in registers as mma.sync m16n8k16 operand fragments (a warp: one 16-row tile of
// its block's gate rows, all of K or half of it) for the whole sequence and carries one batch tile.
//
// Forward, a step: each warp multiplies its tile by h_{t-1} ([H][tile] in shared memory, read by
// ldmatrix.trans), the warps add the input projection, swap two gates with the lane 16 away so each thread
// holds all four of one (unit, batch row), update the cell (in float32), and stage their block's slice of
// h_t; the block sends the slice into every block's next buffer: within a cluster by st.async into their
// shared memory, completing a transaction count on their mbarrier (no fence, no cluster barrier a step),
// else through global memory with per-block step flags. Backward, an iteration: the cell backward of its
// units, then each warp multiplies W_hh^T (its fragments) by the block's dz and sends each block the
// partial sums of that block's units; receivers add them in block order.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "lstm_persistent.h"

namespace fastseq {
namespace kernels {
namespace {

constexpr int kWarps = kLstmPersistentWarps;
constexpr int kThreads = 32 * kWarps;
constexpr unsigned kFull = 0xffffffffu;

// ------------------------------------------------------------------------------------------ element types

template <typename T> __device__ __forceinline__ float to_float(T v);
template <> __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <> __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __half from_float(float v) { return __float2half_rn(v); }

template <typename T> __device__ __forceinline__ uint16_t bits(T v) { return *reinterpret_cast<uint16_t*>(&v); }

// Two elements in one register, the first in the low half (as an operand fragment holds them).
template <typename T> __device__ __forceinline__ uint32_t pack(T lo, T hi) {
  return static_cast<uint32_t>(bits(lo)) | (static_cast<uint32_t>(bits(hi)) << 16);
}

template <typename T> struct Mma;
template <> struct Mma<__nv_bfloat16> {
  static __device__ __forceinline__ void run(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};
template <> struct Mma<__half> {
  static __device__ __forceinline__ void run(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// B operands of two n-tiles (x4) or one (x2) of a [K][N] 16-bit buffer, transposed on the way in.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[4], uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];" : "=r"(r[0]), "=r"(r[1]) : "r"(address));
}

// tanh on the special-function unit (16-bit results); sigmoid from it: one MUFU each.
__device__ __forceinline__ float fast_tanh(float x) {
  float y;
  asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ float fast_sigmoid(float x) { return fmaf(0.5f, fast_tanh(0.5f * x), 0.5f); }

// ------------------------------------------------------------------------------------------ the exchange

// The cluster exchange's instructions are sm_90's. An sm_80 build compiles them to a trap; the launcher never
// takes the cluster exchange there (lstm_persistent_launch_shape asks the device what it can place).
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
#define FASTSEQ_CLUSTERS 1
#else
#define FASTSEQ_CLUSTERS 0
#endif

// The address in block `rank`'s shared memory of what lies at `local` in this block's.
__device__ __forceinline__ uint32_t remote(uint32_t local, uint32_t rank) {
  uint32_t out = local;
#if FASTSEQ_CLUSTERS
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(out) : "r"(local), "r"(rank));
#else
  __trap();
#endif
  return out;
}

__device__ __forceinline__ void mbarrier_init(uint64_t* bar) {
#if FASTSEQ_CLUSTERS
  asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_address(bar)) : "memory");
#endif
}

// This block's arrival on its own barrier, announcing the bytes its peers send it this phase (they may
// arrive before it: the transaction count goes below zero until then).
__device__ __forceinline__ void mbarrier_expect(uint64_t* bar, uint32_t bytes) {
#if FASTSEQ_CLUSTERS
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_address(bar)), "r"(bytes)
               : "memory");
#endif
}

__device__ __forceinline__ void mbarrier_wait(uint64_t* bar, uint32_t parity) {
#if FASTSEQ_CLUSTERS
  const uint32_t address = smem_address(bar);
  uint32_t done = 0;
  while (!done) {
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], %2;\n"
        " selp.u32 %0, 1, 0, p;\n}"
        : "=r"(done)
        : "r"(address), "r"(parity)
        : "memory");
  }
#else
  __trap();
#endif
}

// 16 bytes (4 words) into another block's shared memory, completing as many bytes on its barrier.
__device__ __forceinline__ void store_async(uint32_t dst, uint4 v, uint32_t bar) {
#if FASTSEQ_CLUSTERS
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.b32 [%0], {%1, %2, %3, %4}, [%5];" ::"r"(dst),
               "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w), "r"(bar)
               : "memory");
#else
  __trap();
#endif
}
__device__ __forceinline__ void store_async(uint32_t dst, float a, float b, uint32_t bar) {
#if FASTSEQ_CLUSTERS
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v2.f32 [%0], {%1, %2}, [%3];" ::"r"(dst), "f"(a),
               "f"(b), "r"(bar)
               : "memory");
#else
  __trap();
#endif
}

__device__ __forceinline__ void cluster_sync() {
#if FASTSEQ_CLUSTERS
  asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;" ::: "memory");
#endif
}

__device__ __forceinline__ void fence_barrier_init() {
#if FASTSEQ_CLUSTERS
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#endif
}

__device__ __forceinline__ uint32_t load_acquire(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void store_release(uint32_t* p, uint32_t v) {
  asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

// Grid exchange: wait until every block of the group has published step count >= `count`.
__device__ __forceinline__ void wait_flags(const uint32_t* flags, int ctas, uint32_t count) {
  for (int i = threadIdx.x; i < ctas; i += kThreads) {
    while (load_acquire(flags + i) < count) {
    }
  }
  __syncthreads();
}

__device__ __forceinline__ void publish_flag(uint32_t* flag, uint32_t count) {
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    store_release(flag, count);
  }
}

__device__ __forceinline__ void copy_async_16(uint32_t dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(src) : "memory");
}
__device__ __forceinline__ void copy_async_wait() {
  asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;" ::: "memory");
}

__device__ __forceinline__ bool active(const int32_t* lengths, int b, int B, int t, int T) {
  return b < B && t < (lengths == nullptr ? T : lengths[b]);
}

// ------------------------------------------------------------------------------------------ the layout

// Block `block`'s local gate row r (tile r / 16 holds units 4(r/16)..+3, rows [i x4 | f x4 | g x4 | o x4])
// as a row of W_hh (see fastseq/ops/lstm/persistent.py, block_rows).
template <int kHidden, int kUnits>
__device__ __forceinline__ int weight_row(int block, int r) {
  return ((r % 16) / 4) * kHidden + block * kUnits + 4 * (r / 16) + (r % 4);
}

template <int kTile> constexpr int row_stride() { return kTile + lstm_row_pad(kTile); }

template <typename T, int kHidden, int kTile> struct ForwardShared {
  static constexpr int kUnits = kHidden >= 1024 ? 16 : 32;
  static constexpr int kStride = row_stride<kTile>();
  T h[2][kHidden * kStride];  // h_{t-1}, h_t: [unit][batch row]
  T stage[2][kUnits * kTile];  // this block's slice of h_t, by step parity
  float partial[kHidden >= 1024 ? 4 * 32 * kTile / 2 : 1];  // the second K half's accumulators
  uint64_t bar[2];
};

template <typename T, int kHidden, int kTile> struct BackwardShared {
  static constexpr int kUnits = kHidden >= 1024 ? 16 : 32;
  static constexpr int kCtas = kHidden / kUnits;
  static constexpr int kStride = row_stride<kTile>();
  T dz[2][4 * kUnits * kStride];  // this block's dz: [local gate row][batch row], by iteration parity
  float recv[2][kCtas * kUnits * kTile];  // the partial sums for this block's units, from every block
  uint64_t bar[2];
};

// ------------------------------------------------------------------------------------------ forward

template <typename T, int kHidden, int kTile>
__global__ void __launch_bounds__(kThreads, 1)
    lstm_persistent_forward_kernel(LstmPersistentForward args, int groups, int launched, int cluster) {
  using Shared = ForwardShared<T, kHidden, kTile>;
  constexpr int kUnits = Shared::kUnits, kCtas = kHidden / kUnits, kStride = Shared::kStride;
  constexpr int kMTiles = 4 * kUnits / 16, kKSplit = kWarps / kMTiles;
  constexpr int kKTiles = kHidden / 16 / kKSplit;  // k-tiles of a warp's W_hh fragments
  constexpr int kNTiles = kTile / 8;
  extern __shared__ __align__(16) unsigned char raw[];
  Shared& sm = *reinterpret_cast<Shared*>(raw);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int grp = lane / 4, tig = lane % 4;
  const int tile_m = warp % kMTiles, half = warp / kMTiles;
  const int block = blockIdx.x % kCtas, group = blockIdx.x / kCtas;
  const int steps = args.T, B = args.B, H = kHidden;
  const T* zx = static_cast<const T*>(args.zx);
  const T* w = static_cast<const T*>(args.w_hh);

  // W_hh's fragments, held for the whole sequence
  uint32_t a[kKTiles][4];
  {
    const int lo = weight_row<kHidden, kUnits>(block, 16 * tile_m + grp);
    const int hi = weight_row<kHidden, kUnits>(block, 16 * tile_m + grp + 8);
    const uint32_t* row_lo = reinterpret_cast<const uint32_t*>(w + static_cast<int64_t>(lo) * H);
    const uint32_t* row_hi = reinterpret_cast<const uint32_t*>(w + static_cast<int64_t>(hi) * H);
#pragma unroll
    for (int kt = 0; kt < kKTiles; ++kt) {
      const int k = (half * kKTiles + kt) * 16 + 2 * tig;
      a[kt][0] = __ldg(row_lo + k / 2);
      a[kt][1] = __ldg(row_hi + k / 2);
      a[kt][2] = __ldg(row_lo + k / 2 + 4);
      a[kt][3] = __ldg(row_hi + k / 2 + 4);
    }
  }
  if (cluster && threadIdx.x == 0) {
    mbarrier_init(&sm.bar[0]);
    mbarrier_init(&sm.bar[1]);
    fence_barrier_init();
  }
  if (cluster) cluster_sync();  // every block's barriers exist before any block sends

  // the (unit, batch row) a thread updates, per n-tile: unit 4 tile_m + (grp % 4), row 8 nt + 2 tig + (grp / 4)
  const bool low = grp < 4;
  const int unit_local = 4 * tile_m + (grp % 4);
  const int unit = block * kUnits + unit_local;
  const bool updates = half == 0;
  T* exchange = static_cast<T*>(args.exchange);
  uint32_t* flags = args.flags;

  for (int tile = group, round = 0; tile < groups; tile += launched, ++round) {
    const int b0 = tile * kTile;
    float c[kNTiles];
    T h[kNTiles];
    // h0 into this block's buffer of step -1 (each block reads it itself); the cells of its pairs from c0
    for (int i = threadIdx.x; i < kHidden * kTile; i += kThreads) {
      const int k = i / kTile, n = i % kTile;
      sm.h[1][k * kStride + n] = b0 + n < B ? static_cast<const T*>(args.h0)[static_cast<int64_t>(b0 + n) * H + k]
                                            : from_float<T>(0.0f);
    }
#pragma unroll
    for (int nt = 0; nt < kNTiles; ++nt) {
      const int b = b0 + nt * 8 + 2 * tig + (low ? 0 : 1);
      const int64_t at = static_cast<int64_t>(b) * H + unit;
      c[nt] = b < B ? to_float(static_cast<const T*>(args.c0)[at]) : 0.0f;
      h[nt] = b < B ? static_cast<const T*>(args.h0)[at] : from_float<T>(0.0f);
    }
    if (!cluster && round > 0) wait_flags(flags + group * kCtas, kCtas, static_cast<uint32_t>(round * steps));
    __syncthreads();

    for (int s = 0; s < steps; ++s) {
      const int t = args.reverse ? steps - 1 - s : s;
      const uint32_t count = static_cast<uint32_t>(round * steps + s + 1);  // grid flags: steps published
      // the input projection of this step's pairs, loaded before the wait for h_{t-1}
      T x4[kNTiles][4];
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt) {
        const int b = b0 + nt * 8 + 2 * tig + (low ? 0 : 1);
        const T* row = zx + (static_cast<int64_t>(t) * B + b) * 4 * H + unit;
#pragma unroll
        for (int g = 0; g < 4; ++g) x4[nt][g] = updates && b < B ? row[g * H] : from_float<T>(0.0f);
      }
      const int prev = (s + 1) % 2;  // the buffer of h_{t-1}
      if (s > 0) {
        if (cluster) {
          mbarrier_wait(&sm.bar[prev], static_cast<uint32_t>(((s - 1) / 2) & 1));
        } else {
          wait_flags(flags + group * kCtas, kCtas, count - 1);
          const T* src = exchange + (static_cast<int64_t>(group) * 2 + prev) * kHidden * kTile;
          for (int i = threadIdx.x; i < kHidden * kTile / 8; i += kThreads) {
            const int k = i / (kTile / 8), chunk = i % (kTile / 8);
            copy_async_16(smem_address(&sm.h[prev][k * kStride + chunk * 8]), src + k * kTile + chunk * 8);
          }
          copy_async_wait();
          __syncthreads();
        }
      }
      if (cluster && threadIdx.x == 0 && s + 1 < steps) {
        mbarrier_expect(&sm.bar[s % 2], static_cast<uint32_t>(kHidden * kTile * sizeof(T)));
      }

      // z = W_hh rows of this warp x h_{t-1}
      float acc[kNTiles][4];
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
      const uint32_t base = smem_address(&sm.h[prev][0]);
#pragma unroll
      for (int kt = 0; kt < kKTiles; ++kt) {
        const int k = (half * kKTiles + kt) * 16 + (lane % 16);
#pragma unroll
        for (int nt = 0; nt < kNTiles; nt += 2) {
          uint32_t b[4];
          const uint32_t address = base + static_cast<uint32_t>((k * kStride + nt * 8 + 8 * (lane / 16)) * sizeof(T));
          if (nt + 1 < kNTiles) {
            ldmatrix_x4_trans(b, address);
            Mma<T>::run(acc[nt], a[kt], b[0], b[1]);
            Mma<T>::run(acc[nt + 1], a[kt], b[2], b[3]);
          } else {
            ldmatrix_x2_trans(b, address);
            Mma<T>::run(acc[nt], a[kt], b[0], b[1]);
          }
        }
      }
      if (kKSplit > 1) {  // the second K half's sums, added by the first half's warp
        if (half == 1) {
#pragma unroll
          for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) sm.partial[((tile_m * kNTiles + nt) * 4 + i) * 32 + lane] = acc[nt][i];
        }
        __syncthreads();
        if (half == 0) {
#pragma unroll
          for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[nt][i] += sm.partial[((tile_m * kNTiles + nt) * 4 + i) * 32 + lane];
        }
      }

      // the cells: each thread takes the two gates of its column from the lane 16 away (every warp swaps,
      // converged; the warps of a second K half then drop theirs)
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt) {
        const float give0 = low ? acc[nt][1] : acc[nt][0], give1 = low ? acc[nt][3] : acc[nt][2];
        const float take0 = __shfl_xor_sync(kFull, give0, 16), take1 = __shfl_xor_sync(kFull, give1, 16);
        if (updates) {
          float z[4];  // i, f, g, o
          z[0] = (low ? acc[nt][0] : take0) + to_float(x4[nt][0]);
          z[1] = (low ? take0 : acc[nt][1]) + to_float(x4[nt][1]);
          z[2] = (low ? acc[nt][2] : take1) + to_float(x4[nt][2]);
          z[3] = (low ? take1 : acc[nt][3]) + to_float(x4[nt][3]);
          const int n = nt * 8 + 2 * tig + (low ? 0 : 1), b = b0 + n;
          const bool on = active(args.lengths, b, B, t, steps);
          const float cell = fast_sigmoid(z[1]) * c[nt] + fast_sigmoid(z[0]) * fast_tanh(z[2]);
          const T out = from_float<T>(fast_sigmoid(z[3]) * fast_tanh(cell));
          if (on) {
            c[nt] = cell;
            h[nt] = out;
          }
          if (b < B) {
            const int64_t at = (static_cast<int64_t>(t) * B + b) * H + unit;
            static_cast<T*>(args.y)[at] = on ? out : from_float<T>(0.0f);
            if (args.gates_ws != nullptr) {
              T* ws = static_cast<T*>(args.gates_ws) + (static_cast<int64_t>(t) * B + b) * 4 * H + unit;
#pragma unroll
              for (int g = 0; g < 4; ++g) ws[g * H] = from_float<T>(z[g]);
              args.c_ws[at] = c[nt];
            }
          }
          sm.stage[s % 2][unit_local * kTile + n] = h[nt];
        }
      }
      __syncthreads();

      // the slice of h_t to every block of the group
      constexpr int kVectors = kUnits * kTile / 8;  // 16-byte vectors of the slice
      const uint4* stage = reinterpret_cast<const uint4*>(&sm.stage[s % 2][0]);
      if (cluster) {
        if (s + 1 < steps) {
          const uint32_t local_bar = smem_address(&sm.bar[s % 2]);
          for (int i = threadIdx.x; i < kCtas * kVectors; i += kThreads) {
            const int dst = i / kVectors, v = i % kVectors;
            const int k = block * kUnits + v / (kTile / 8), chunk = v % (kTile / 8);
            const uint32_t at = smem_address(&sm.h[s % 2][k * kStride + chunk * 8]);
            store_async(remote(at, dst), stage[v], remote(local_bar, dst));
          }
        }
      } else {
        uint4* dst = reinterpret_cast<uint4*>(exchange + (static_cast<int64_t>(group) * 2 + s % 2) * kHidden * kTile +
                                              block * kUnits * kTile);
        for (int v = threadIdx.x; v < kVectors; v += kThreads) dst[v] = stage[v];
        publish_flag(flags + group * kCtas + block, count);
      }
    }
    if (updates) {
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt) {
        const int b = b0 + nt * 8 + 2 * tig + (low ? 0 : 1);
        if (b < B) {
          const int64_t at = static_cast<int64_t>(b) * H + unit;
          static_cast<T*>(args.h_n)[at] = h[nt];
          static_cast<T*>(args.c_n)[at] = from_float<T>(c[nt]);
        }
      }
    }
  }
  if (cluster) cluster_sync();  // no block leaves while a peer may still send into its shared memory
}

// ------------------------------------------------------------------------------------------ backward

template <typename T, int kHidden, int kTile>
__global__ void __launch_bounds__(kThreads, 1)
    lstm_persistent_backward_kernel(LstmPersistentBackward args, int groups, int launched, int cluster) {
  using Shared = BackwardShared<T, kHidden, kTile>;
  constexpr int kUnits = Shared::kUnits, kCtas = Shared::kCtas, kStride = Shared::kStride;
  constexpr int kMTiles = kHidden / 16 / kWarps;  // 16-row tiles of dh's units per warp (W_hh^T's rows)
  constexpr int kKTiles = 4 * kUnits / 16;        // over this block's gate rows
  constexpr int kNTiles = kTile / 8;
  constexpr int kPairs = kUnits * kTile / kThreads > 0 ? kUnits * kTile / kThreads : 1;  // (unit, row) per thread
  extern __shared__ __align__(16) unsigned char raw[];
  Shared& sm = *reinterpret_cast<Shared*>(raw);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int grp = lane / 4, tig = lane % 4;
  const int block = blockIdx.x % kCtas, group = blockIdx.x / kCtas;
  const int steps = args.T, B = args.B, H = kHidden;
  const T* w = static_cast<const T*>(args.w_hh);

  // W_hh^T's fragments: A'[m][r] = W_hh[row(r)][m], m the unit of dh, r this block's gate row
  uint32_t a[kMTiles][kKTiles][4];
#pragma unroll
  for (int mi = 0; mi < kMTiles; ++mi) {
    const int m = (warp * kMTiles + mi) * 16 + grp;
#pragma unroll
    for (int kt = 0; kt < kKTiles; ++kt) {
      const int r = kt * 16 + 2 * tig;
      const T* r0 = w + static_cast<int64_t>(weight_row<kHidden, kUnits>(block, r)) * H;
      const T* r1 = w + static_cast<int64_t>(weight_row<kHidden, kUnits>(block, r + 1)) * H;
      const T* r8 = w + static_cast<int64_t>(weight_row<kHidden, kUnits>(block, r + 8)) * H;
      const T* r9 = w + static_cast<int64_t>(weight_row<kHidden, kUnits>(block, r + 9)) * H;
      a[mi][kt][0] = pack(r0[m], r1[m]);
      a[mi][kt][1] = pack(r0[m + 8], r1[m + 8]);
      a[mi][kt][2] = pack(r8[m], r9[m]);
      a[mi][kt][3] = pack(r8[m + 8], r9[m + 8]);
    }
  }
  if (cluster && threadIdx.x == 0) {
    mbarrier_init(&sm.bar[0]);
    mbarrier_init(&sm.bar[1]);
    fence_barrier_init();
  }
  if (cluster) cluster_sync();

  float* exchange = args.exchange;
  uint32_t* flags = args.flags;
  constexpr uint32_t kBytes = kCtas * kUnits * kTile * sizeof(float);  // received each iteration

  for (int tile = group, round = 0; tile < groups; tile += launched, ++round) {
    const int b0 = tile * kTile;
    float carry[kPairs], dc[kPairs];
#pragma unroll
    for (int p = 0; p < kPairs; ++p) {
      const int i = threadIdx.x + p * kThreads, ul = i / kTile, b = b0 + i % kTile;
      const int64_t at = static_cast<int64_t>(b) * H + block * kUnits + ul;
      const bool real = i < kUnits * kTile && b < B;
      carry[p] = real ? to_float(static_cast<const T*>(args.grad_h_n)[at]) : 0.0f;
      dc[p] = real ? to_float(static_cast<const T*>(args.grad_c_n)[at]) : 0.0f;
    }
    if (!cluster && round > 0) wait_flags(flags + group * kCtas, kCtas, static_cast<uint32_t>(round * steps));
    __syncthreads();

    for (int k = 0; k <= steps; ++k) {  // k = steps: only the partial sums of dh0 to take in
      const int s = steps - 1 - k;
      const int t = args.reverse ? steps - 1 - s : s;
      const int tp = args.reverse ? t + 1 : t - 1;  // the step before, in the forward's order
      const int par = k % 2;
      // what this iteration adds to each pair's dh: the partial sums sent last iteration
      if (k > 0) {
        if (cluster) {
          mbarrier_wait(&sm.bar[par], static_cast<uint32_t>(((k - 1) / 2) & 1));  // its fill number's parity
        } else {
          wait_flags(flags + group * kCtas, kCtas, static_cast<uint32_t>(round * steps + k));
        }
      }
      if (cluster && threadIdx.x == 0 && k < steps) mbarrier_expect(&sm.bar[(k + 1) % 2], kBytes);
      const float* received = cluster ? &sm.recv[par][0]
                                      : exchange + ((static_cast<int64_t>(group) * 2 + par) * kCtas + block) *
                                                       kCtas * kUnits * kTile;
#pragma unroll
      for (int p = 0; p < kPairs; ++p) {
        const int i = threadIdx.x + p * kThreads, ul = i / kTile, n = i % kTile, b = b0 + n;
        if (i >= kUnits * kTile) continue;
        float dh = carry[p];
        if (k > 0) {
#pragma unroll 4
          for (int src = 0; src < kCtas; ++src) {
            const int at = (src * kUnits + ul) * kTile + n;
            dh += cluster ? received[at] : __ldcg(received + at);
          }
        }
        if (k == steps) {  // the gradients of h0 and c0
          if (b < B) {
            const int64_t at = static_cast<int64_t>(b) * H + block * kUnits + ul;
            static_cast<T*>(args.grad_h0)[at] = from_float<T>(dh);
            static_cast<T*>(args.grad_c0)[at] = from_float<T>(dc[p]);
          }
          continue;
        }
        const int unit = block * kUnits + ul;
        const bool on = active(args.lengths, b, B, t, steps);
        float dz[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        if (on) {
          const int64_t row = (static_cast<int64_t>(t) * B + b);
          const T* zr = static_cast<const T*>(args.gates_ws) + row * 4 * H + unit;
          const float gi = fast_sigmoid(to_float(zr[0])), gf = fast_sigmoid(to_float(zr[H]));
          const float gg = fast_tanh(to_float(zr[2 * H])), go = fast_sigmoid(to_float(zr[3 * H]));
          const float c_now = args.c_ws[row * H + unit];
          const float c_prev = s == 0 ? to_float(static_cast<const T*>(args.c0)[static_cast<int64_t>(b) * H + unit])
                                      : args.c_ws[(static_cast<int64_t>(tp) * B + b) * H + unit];
          const float grad = to_float(static_cast<const T*>(args.grad_y)[row * H + unit]);
          const float dh_t = dh + grad, tc = fast_tanh(c_now);
          const float dcell = dc[p] + dh_t * go * (1.0f - tc * tc);
          dz[0] = dcell * gg * gi * (1.0f - gi);
          dz[1] = dcell * c_prev * gf * (1.0f - gf);
          dz[2] = dcell * gi * (1.0f - gg * gg);
          dz[3] = dh_t * tc * go * (1.0f - go);
          dc[p] = dcell * gf;
          carry[p] = 0.0f;
        } else {
          carry[p] = dh;  // an inactive row passes dh on (the gradient of its zero output ignored)
        }
#pragma unroll
        for (int g = 0; g < 4; ++g) {
          const T v = from_float<T>(dz[g]);
          sm.dz[par][(16 * (ul / 4) + 4 * g + ul % 4) * kStride + n] = v;
          if (b < B) static_cast<T*>(args.dz_ws)[(static_cast<int64_t>(t) * B + b) * 4 * H + g * H + unit] = v;
        }
      }
      if (k == steps) break;
      __syncthreads();

      // partial sums of dh_{t-1} over this block's gate rows, for every unit
      float acc[kMTiles][kNTiles][4];
#pragma unroll
      for (int mi = 0; mi < kMTiles; ++mi)
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) acc[mi][nt][0] = acc[mi][nt][1] = acc[mi][nt][2] = acc[mi][nt][3] = 0.0f;
      const uint32_t base = smem_address(&sm.dz[par][0]);
#pragma unroll
      for (int kt = 0; kt < kKTiles; ++kt) {
        const int r = kt * 16 + (lane % 16);
#pragma unroll
        for (int nt = 0; nt < kNTiles; nt += 2) {
          uint32_t b[4];
          const uint32_t address = base + static_cast<uint32_t>((r * kStride + nt * 8 + 8 * (lane / 16)) * sizeof(T));
          if (nt + 1 < kNTiles) {
            ldmatrix_x4_trans(b, address);
          } else {
            ldmatrix_x2_trans(b, address);
          }
#pragma unroll
          for (int mi = 0; mi < kMTiles; ++mi) {
            Mma<T>::run(acc[mi][nt], a[mi][kt], b[0], b[1]);
            if (nt + 1 < kNTiles) Mma<T>::run(acc[mi][nt + 1], a[mi][kt], b[2], b[3]);
          }
        }
      }
      // each unit's partial sums to the block that owns it: recv[next][this block][unit][row]
      const int next = (k + 1) % 2;
#pragma unroll
      for (int mi = 0; mi < kMTiles; ++mi) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int m = (warp * kMTiles + mi) * 16 + grp + 8 * half;
          const int owner = m / kUnits, ul = m % kUnits;
#pragma unroll
          for (int nt = 0; nt < kNTiles; ++nt) {
            const int n = nt * 8 + 2 * tig, at = (block * kUnits + ul) * kTile + n;
            const float v0 = acc[mi][nt][2 * half], v1 = acc[mi][nt][2 * half + 1];
            if (cluster) {
              store_async(remote(smem_address(&sm.recv[next][at]), owner), v0, v1,
                          remote(smem_address(&sm.bar[next]), owner));
            } else {
              float* dst = exchange + ((static_cast<int64_t>(group) * 2 + next) * kCtas + owner) * kCtas * kUnits * kTile;
              *reinterpret_cast<float2*>(dst + at) = make_float2(v0, v1);
            }
          }
        }
      }
      if (!cluster) publish_flag(flags + group * kCtas + block, static_cast<uint32_t>(round * steps + k + 1));
    }
  }
  if (cluster) cluster_sync();
}

// ------------------------------------------------------------------------------------------ launches

template <typename T, int kHidden, int kTile, bool kBackward>
cudaError_t launch(const void* args, int groups, LstmExchange exchange, int launched, cudaStream_t stream,
                   bool shape_only, int* fits) {
  constexpr int kUnits = kHidden >= 1024 ? 16 : 32, kCtas = kHidden / kUnits;
  using Args = typename std::conditional<kBackward, LstmPersistentBackward, LstmPersistentForward>::type;
  void (*kernel)(Args, int, int, int) = nullptr;
  size_t shared = 0;
  if constexpr (kBackward) {
    kernel = lstm_persistent_backward_kernel<T, kHidden, kTile>;
    shared = sizeof(BackwardShared<T, kHidden, kTile>);
  } else {
    kernel = lstm_persistent_forward_kernel<T, kHidden, kTile>;
    shared = sizeof(ForwardShared<T, kHidden, kTile>);
  }
  // the plan (what the chooser saw) never asks for less shared memory than the kernel takes
  static_assert(sizeof(std::conditional_t<kBackward, BackwardShared<T, kHidden, kTile>, ForwardShared<T, kHidden,
                                                                                                     kTile>>) <=
                lstm_persistent_shared_bytes(kHidden, kUnits, kCtas, kTile, kHidden >= 1024 ? 2 : 1, kBackward));
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared));
  if (err != cudaSuccess) return err;
  const bool cluster = exchange == LstmExchange::kCluster;
  cudaLaunchConfig_t config = {};
  config.gridDim = static_cast<unsigned>(launched * kCtas);
  config.blockDim = kThreads;
  config.dynamicSmemBytes = shared;
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  if (cluster) {
    if (kCtas > 8) {
      err = cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
      if (err != cudaSuccess) return err;
    }
    attribute[0].id = cudaLaunchAttributeClusterDimension;
    attribute[0].val.clusterDim.x = kCtas;
    attribute[0].val.clusterDim.y = 1;
    attribute[0].val.clusterDim.z = 1;
  } else {
    attribute[0].id = cudaLaunchAttributeCooperative;
    attribute[0].val.cooperative = 1;
  }
  config.attrs = attribute;
  config.numAttrs = 1;
  if (shape_only) {  // how many groups the device holds at once with this exchange
    if (cluster) return cudaOccupancyMaxActiveClusters(fits, kernel, &config);
    int per_sm = 0, device = 0, sms = 0;
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, shared);
    if (err == cudaSuccess) err = cudaGetDevice(&device);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    *fits = per_sm * sms / kCtas;
    return err;
  }
  return cudaLaunchKernelEx(&config, kernel, *static_cast<const Args*>(args), groups, launched, cluster ? 1 : 0);
}

// Every (element, hidden, tile) the plan can ask for: tiles 8, 16, ... up to lstm_persistent_max_tile.
template <bool kBackward, typename T, int kHidden, int kTile>
cudaError_t dispatch_tile(const void* args, const LstmPersistentPlan& plan, LstmExchange exchange, int launched,
                          cudaStream_t stream, bool shape_only, int* fits) {
  if constexpr (kTile > lstm_persistent_max_tile(kHidden, kBackward)) {
    return cudaErrorInvalidValue;  // a plan outside the instantiated tiles
  } else {
    if (plan.batch_tile == kTile) return launch<T, kHidden, kTile, kBackward>(args, plan.groups, exchange, launched,
                                                                             stream, shape_only, fits);
    return dispatch_tile<kBackward, T, kHidden, kTile * 2>(args, plan, exchange, launched, stream, shape_only, fits);
  }
}

template <bool kBackward, typename T>
cudaError_t dispatch_type(const void* args, const LstmPersistentPlan& plan, LstmExchange exchange, int launched,
                          cudaStream_t stream, bool shape_only, int* fits) {
  switch (plan.ctas * plan.units) {
    case 128: return dispatch_tile<kBackward, T, 128, 8>(args, plan, exchange, launched, stream, shape_only, fits);
    case 256: return dispatch_tile<kBackward, T, 256, 8>(args, plan, exchange, launched, stream, shape_only, fits);
    case 512: return dispatch_tile<kBackward, T, 512, 8>(args, plan, exchange, launched, stream, shape_only, fits);
    case 1024: return dispatch_tile<kBackward, T, 1024, 8>(args, plan, exchange, launched, stream, shape_only, fits);
    default: return cudaErrorInvalidValue;
  }
}

template <bool kBackward>
cudaError_t dispatch(const void* args, const LstmPersistentPlan& plan, LstmElement element, LstmExchange exchange,
                     int launched, cudaStream_t stream, bool shape_only, int* fits) {
  return element == LstmElement::kBFloat16
             ? dispatch_type<kBackward, __nv_bfloat16>(args, plan, exchange, launched, stream, shape_only, fits)
             : dispatch_type<kBackward, __half>(args, plan, exchange, launched, stream, shape_only, fits);
}

}  // namespace

cudaError_t lstm_persistent_launch_shape(const LstmPersistentPlan& plan, LstmElement element, bool backward,
                                         LstmExchange* exchange, int* launched_groups) {
  if (plan.refusal != nullptr) return cudaErrorInvalidValue;
  *exchange = plan.exchange;
  int fits = 0;
  cudaError_t err = backward ? dispatch<true>(nullptr, plan, element, *exchange, 1, nullptr, true, &fits)
                             : dispatch<false>(nullptr, plan, element, *exchange, 1, nullptr, true, &fits);
  if (err != cudaSuccess || fits < 1) {  // clusters the device cannot place: the grid exchange
    if (*exchange == LstmExchange::kGrid) return err != cudaSuccess ? err : cudaErrorNotSupported;
    cudaGetLastError();
    *exchange = LstmExchange::kGrid;
    err = backward ? dispatch<true>(nullptr, plan, element, *exchange, 1, nullptr, true, &fits)
                   : dispatch<false>(nullptr, plan, element, *exchange, 1, nullptr, true, &fits);
    if (err != cudaSuccess) return err;
    if (fits < 1) return cudaErrorNotSupported;
  }
  // clusters beyond what fits wait for a place; a cooperative grid must be resident all at once
  *launched_groups = *exchange == LstmExchange::kCluster ? plan.groups : (plan.groups < fits ? plan.groups : fits);
  return cudaSuccess;
}

cudaError_t lstm_persistent_forward(const LstmPersistentForward& args, const LstmPersistentPlan& plan,
                                    LstmElement element, LstmExchange exchange, int launched_groups,
                                    cudaStream_t stream) {
  return dispatch<false>(&args, plan, element, exchange, launched_groups, stream, false, nullptr);
}

cudaError_t lstm_persistent_backward(const LstmPersistentBackward& args, const LstmPersistentPlan& plan,
                                     LstmElement element, LstmExchange exchange, int launched_groups,
                                     cudaStream_t stream) {
  return dispatch<true>(&args, plan, element, exchange, launched_groups, stream, false, nullptr);
}

}  // namespace kernels
}  // namespace fastseq
