// fastseq._C: the Python module whose import registers the compiled kernels (each source file registers
// its own as fastseq_ext::* implementations, for CPU and, when built with CUDA, CUDA tensors; the
// schemas are declared once, in fastseq/ops/registry.py), and tells Python how it was built.
#include <torch/extension.h>
#include <torch/version.h>

#include "../kernels/lstm_persistent_plan.h"

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

// kernels/lstm_persistent_plan.h's plan for a device of the given limits, as a dict (the chooser and tests).
pybind11::dict lstm_persistent_plan(int hidden, int proj, int batch, int element_bytes, bool backward,
                                    int multiprocessors, int major, int max_cluster, int64_t shared_per_block) {
  kernels::LstmDeviceLimits device;
  device.multiprocessors = multiprocessors;
  device.major = major;
  device.max_cluster = max_cluster;
  device.shared_per_block = shared_per_block;
  const kernels::LstmPersistentPlan plan =
      kernels::plan_lstm_persistent(hidden, proj, batch, element_bytes, backward, device);
  pybind11::dict out;
  out["refusal"] = plan.refusal == nullptr ? pybind11::object(pybind11::none()) : pybind11::str(plan.refusal);
  out["exchange"] = plan.exchange == kernels::LstmExchange::kCluster ? "cluster" : "grid";
  out["ctas"] = plan.ctas;
  out["units"] = plan.units;
  out["m_tiles"] = plan.m_tiles;
  out["k_split"] = plan.k_split;
  out["batch_tile"] = plan.batch_tile;
  out["groups"] = plan.groups;
  out["resident_groups"] = plan.resident_groups;
  out["shared_bytes"] = plan.shared_bytes;
  out["weight_registers"] = plan.weight_registers;
  return out;
}

}  // namespace
}  // namespace fastseq

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastseq's compiled kernels (registered as torch.ops.fastseq_ext.*)";
  m.def("build_info", &fastseq::build_info, "How this extension was built");
  m.def("lstm_persistent_plan", &fastseq::lstm_persistent_plan,
        "How the persistent LSTM kernel lays a layer over a device of these limits, or why it cannot",
        pybind11::arg("hidden"), pybind11::arg("proj"), pybind11::arg("batch"), pybind11::arg("element_bytes"),
        pybind11::arg("backward"), pybind11::arg("multiprocessors"), pybind11::arg("major"),
        pybind11::arg("max_cluster"), pybind11::arg("shared_per_block"));
#ifdef FASTSEQ_WITH_CUDA
  m.def("probe_tanh_rate", &fastseq::probe_tanh_rate, "tanh results/s of a kind (benchmarks/gpu_window.py)",
        pybind11::arg("kind"), pybind11::arg("iters") = 1024, pybind11::arg("waves") = 4);
  m.def("probe_cluster_barrier_ns", &fastseq::probe_cluster_barrier_ns, "ns per thread-block cluster barrier",
        pybind11::arg("cluster"), pybind11::arg("kind") = "sync", pybind11::arg("iters") = 10000);
  m.def("probe_grid_barrier_ns", &fastseq::probe_grid_barrier_ns, "ns per grid-wide barrier, a block per SM",
        pybind11::arg("iters") = 2000);
#endif
}
