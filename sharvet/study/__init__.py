"""The study of the paper's experiments on SmolLM2-135M: its stages (:mod:`.stages`), and the tables, claim checks
and figures of ``docs/results.md`` rendered from its result files (:mod:`.tables`, :mod:`.claims`,
:mod:`.document`). ``benchmarks/study_smollm2.py`` is the command line over these."""
