"""mscol-bench: the benchmark harness. The subpackages follow the pipeline (data, separation,
pretrain, evaluation, pipeline); docs/CONTRACTS.md maps them and what each may import. This
package module imports nothing, so every layer may import it."""
