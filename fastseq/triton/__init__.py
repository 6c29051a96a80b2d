"""What every Triton kernel of fastseq shares: the activations (activations.py) and the launch helpers,
accumulation types and key padding rule (common.py). The kernels themselves live with their ops, in
fastseq/ops/<op>/triton_*.py."""
