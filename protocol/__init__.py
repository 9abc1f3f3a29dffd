"""fedkey protocol: everything that crosses the wire between phone and server.

- `pipeline`: `UpdatePipeline.encode` (phones → v1 messages, vectorised) and `decode` / `decode_batch`;
- `pipeline_config`: the stage list (pydantic, TOML `[[pipeline]]`) and the DP safety rule;
- `stages`: each stage's device and server halves; `wire`: the v1 byte layout and its validating parser;
- `prng`, `sparsify`, `hadamard`, `quantize`: the reproducible building blocks the spec pins down;
- `errors`: the typed `WireFormatError` hierarchy; `testvectors`: generator of `testdata/`.

The spec is `WIRE_FORMAT.md`.
"""
