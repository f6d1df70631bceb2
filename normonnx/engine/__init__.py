"""The engine floor: running and judging. Input suites and seeded feeds (inputs), the runtimes registry
and its one ONNX Runtime session factory (runtimes/), what ORT fuses (fusion), the probe that confirms
a found norm by running it, validate (an exported norm against the oracle on every runtime), layers
(the engine on a cut-out layer: scan, fix's proof and the written model are judged there), bench
(timing) and the one process pool. Imports: core, graph, exporting."""
