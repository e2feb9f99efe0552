"""edgeclf: the project's one command, above every stage (`edgeclf COMMAND --help`).

The layers, top to bottom (docs/architecture.md; `make lint` checks them): edgeclf, checks, benchmark,
export, train, runlib, edge_runtime. The Python API lives in the stages: train.train(), export.export(),
benchmark.benchmark() and export.bundle.build().
"""
