"""The benchmark suite (`make bench`, `python -m bench`): engine overhead, streaming throughput,
concurrency, REST rates, history scaling, LiteLLM's proxy as a peer, and a memory soak.

Layout: `provider` (fake OpenAI-compatible server), `relay` (the bare baseline), `loadgen` / `loadrun`
(client processes), `procs` (server processes), `database` (fresh databases, bulk seeding), `harness`
(one run's servers), `scenarios/` (one module per scenario), `stats`, `targets`, `report`, `runner`.
Measurements only: nothing here asserts a time, and nothing here runs in the test suite.
"""
