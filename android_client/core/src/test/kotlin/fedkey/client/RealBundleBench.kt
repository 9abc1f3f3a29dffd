package fedkey.client

import fedkey.client.wire.StageConfig
import fedkey.client.wire.UpdateDecoder
import fedkey.client.wire.UpdateEncoder
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assumptions.assumeTrue
import org.junit.jupiter.api.Test
import java.io.File

/**
 * Timings on a full-size bundle (skipped unless -Dfedkey.realBundle=DIR is given, e.g. a `fedkey export`):
 *     mvn test -Dtest=RealBundleBench -Dfedkey.realBundle=/path/to/bundle [-Dfedkey.realTokenizerCases=cases.json]
 */
class RealBundleBench {
    private val dir = System.getProperty("fedkey.realBundle")?.let(::File)

    private inline fun timeMs(repeat: Int, body: () -> Unit): Double {
        val t0 = System.nanoTime()
        repeat(repeat) { body() }
        return (System.nanoTime() - t0) / 1e6 / repeat
    }

    @Test
    fun bench() {
        assumeTrue(dir != null && dir.isDirectory, "set -Dfedkey.realBundle=DIR to run")
        val t0 = System.nanoTime()
        val bundle = Bundle.load(dir!!)
        println("BENCH verify bundle (sha256 of ${bundle.manifest.files.values.sumOf { it.size } / 1e6} MB): ${(System.nanoTime() - t0) / 1e6} ms")
        val tok = bundle.tokenizer()
        System.getProperty("fedkey.realTokenizerCases")?.let { path ->
            val cases = Json.parse(File(path).readText()) as List<*>
            for (c in cases) {
                val case = c.asObject("case")
                val n = TextNormalizer.normalize(case["text"] as String)
                assertEquals(case["normalized"], n)
                assertArrayEquals((case["ids"] as List<*>).map { (it as Long).toInt() }.toIntArray(), tok.encode(n)) { n + " -> " + tok.encode(n).map { tok.idToPiece(it) } }
            }
            println("BENCH real tokenizer: ${cases.size} cases equal Python")
        }
        val text = "hey are you coming to the party tonight or are you staying home"
        println("BENCH tokenize message: ${timeMs(1000) { tok.encodeMessage(text) }} ms")
        for (quantized in listOf(true, false)) {
            Predictor(bundle, quantized = quantized).use { p ->
                val ctx = p.newContext()
                repeat(20) { ctx.setText("hey are you coming "); ctx.reset() }
                val state = p.initialState()
                val step = timeMs(500) { p.step(5, state) }
                ctx.setText("hey are you coming to the ")
                repeat(5) { ctx.suggest(3) }
                val suggest = timeMs(50) { ctx.suggest(3) }
                println("BENCH ${if (quantized) "int8" else "fp32"}: step ${"%.3f".format(step)} ms, suggest(3) ${"%.2f".format(suggest)} ms -> ${ctx.suggest(3)}")
            }
        }
        Trainer(bundle).use { t ->
            val messages = (0 until 64).map { "message number $it says hey are you coming to the party tonight" }
            val batches = t.batches(t.rows(messages), 8)
            val w = bundle.readWeights()
            t.localUpdate(w, batches, 1, 0.5f, 1f, 0.1f)
            val ms = timeMs(1) { t.localUpdate(w, batches, batches.numBatches, 0.5f, 1f, 0.1f) }
            println("BENCH local update: ${batches.numBatches} steps of 8x${t.seqLen}: ${"%.1f".format(ms)} ms (${"%.1f".format(ms / batches.numBatches)} ms/step)")
            val delta = t.localUpdate(w, batches, batches.numBatches, 0.5f, 1f, 0.1f).delta
            for (json in listOf(
                """[{"kind": "clip", "norm": 0.1}, {"kind": "quantize", "bits": 8}]""",
                """[{"kind": "clip", "norm": 0.1}, {"kind": "random_k", "fraction": 0.01}, {"kind": "rotate", "block": 1024}, {"kind": "quantize", "bits": 4}]""",
                """[{"kind": "clip", "norm": 0.1}, {"kind": "error_feedback"}, {"kind": "top_k", "fraction": 0.01}, {"kind": "quantize", "bits": 4}]""",
                """[{"kind": "clip", "norm": 0.1}, {"kind": "gaussian_noise", "epsilon": 8, "delta": 1e-5}, {"kind": "quantize", "bits": 2}]""",
            )) {
                val enc = UpdateEncoder(StageConfig.listFromJson(json), bundle.numParameters)
                var bytes = ByteArray(0)
                val e = timeMs(3) { bytes = enc.encode(delta, bundle.modelVersion, 1, 1).bytes }
                val d = timeMs(3) { UpdateDecoder.decode(bytes, bundle.numParameters) }
                println("BENCH encode ${"%.1f".format(e)} ms, decode ${"%.1f".format(d)} ms, ${bytes.size} bytes (${"%.1f".format(4.0 * bundle.numParameters / bytes.size)}x): $json")
            }
        }
    }
}
