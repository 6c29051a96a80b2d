"""Triton kernels, forward and backward, for fastseq's ops, and the launchers that call them."""
