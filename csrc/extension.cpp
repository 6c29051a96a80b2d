// fastseq._C: the Python module whose import registers the compiled kernels (each source file registers
// its own as fastseq_ext::* implementations, for CPU and, when built with CUDA, CUDA tensors; the
// schemas are declared once, in fastseq/ops/registry.py), and tells Python how it was built.
#include <torch/extension.h>
#include <torch/version.h>

#ifdef FASTSEQ_WITH_CUDA
#include <cuda_runtime_api.h>

#include "machine_probes.h"
#endif

namespace fastseq {
namespace {

pybind11::dict build_info() {
  pybind11::dict info;
  info["torch_version"] = TORCH_VERSION;
#ifdef FASTSEQ_WITH_CUDA
  info["with_cuda"] = true;
  info["cuda_runtime"] = CUDART_VERSION;
#else
  info["with_cuda"] = false;
  info["cuda_runtime"] = pybind11::none();
#endif
  return info;
}

}  // namespace
}  // namespace fastseq

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastseq's compiled kernels (registered as torch.ops.fastseq_ext.*)";
  m.def("build_info", &fastseq::build_info, "How this extension was built");
#ifdef FASTSEQ_WITH_CUDA
  m.def("probe_tanh_rate", &fastseq::probe_tanh_rate, "tanh results/s of a kind (benchmarks/gpu_window.py)",
        pybind11::arg("kind"), pybind11::arg("iters") = 1024, pybind11::arg("waves") = 4);
  m.def("probe_cluster_barrier_ns", &fastseq::probe_cluster_barrier_ns, "ns per thread-block cluster barrier",
        pybind11::arg("cluster"), pybind11::arg("kind") = "sync", pybind11::arg("iters") = 10000);
  m.def("probe_grid_barrier_ns", &fastseq::probe_grid_barrier_ns, "ns per grid-wide barrier, a block per SM",
        pybind11::arg("iters") = 2000);
#endif
}
