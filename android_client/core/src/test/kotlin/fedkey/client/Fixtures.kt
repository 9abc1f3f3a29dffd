package fedkey.client

import org.junit.jupiter.api.Assumptions.assumeTrue

/** The Python-made parity fixtures (scripts/make_fixtures.py; `make test-kotlin` writes them first). */
object Fixtures {
    private val loaded: Map<String, Any?>? by lazy {
        if (TestPaths.expected.isFile) Json.parse(TestPaths.expected.readText()).asObject("expected.json") else null
    }

    /** expected.json, or the test is skipped (with the reason) when the fixtures were not generated. */
    fun expected(): Map<String, Any?> {
        assumeTrue(loaded != null) {
            "no Python fixtures in ${TestPaths.fixtures}: run `.venv/bin/python android_client/core/scripts/make_fixtures.py` (make test-kotlin does)"
        }
        return loaded!!
    }

    fun bundle(): Bundle {
        expected()
        return Bundle.load(TestPaths.bundle)
    }
}
