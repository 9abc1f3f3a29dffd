package fedkey.client

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import kotlin.math.abs

class PredictorParityTest {
    private fun maxAbsDiff(a: FloatArray, b: FloatArray): Double {
        assertEquals(a.size, b.size)
        return a.indices.maxOf { abs(a[it].toDouble() - b[it].toDouble()) }
    }

    private fun check(role: String, quantized: Boolean, tol: Double) {
        val predict = Fixtures.expected()["predict"].asObject("predict")
        val expected = predict[role].asObject(role)
        val tokens = (predict["tokens"] as List<*>).map { (it as Long).toInt() }.toIntArray()
        Predictor(Fixtures.bundle(), quantized = quantized).use { p ->
            val (logits, state) = p.run(tokens)
            val want = expected["logits"] as List<*>
            assertEquals(want.size, logits.size)
            for (i in logits.indices) {
                val d = maxAbsDiff(TestPaths.floats(want[i]), logits[i])
                assertTrue(d <= tol, "$role logits after token $i differ by $d")
            }
            assertTrue(maxAbsDiff(TestPaths.floats(expected["h"]), state.h) <= tol, "$role h")
            assertTrue(maxAbsDiff(TestPaths.floats(expected["c"]), state.c) <= tol, "$role c")
        }
    }

    @Test
    fun `fp32 predict logits and state equal Python onnxruntime`() = check("predict", quantized = false, tol = 1e-5)

    @Test
    fun `int8 predict logits and state equal Python onnxruntime`() = check("predict_int8", quantized = true, tol = 1e-4)

    @Test
    fun `whole-word suggestions equal the Python beam search`() {
        val s = Fixtures.expected()["suggest"].asObject("suggest")
        val k = (s["k"] as Long).toInt()
        Predictor(Fixtures.bundle(), quantized = false).use { p ->
            assertEquals(s["lexicon"], p.lexicon?.toList(), "the Predictor uses the bundle's lexicon.txt by default")
            val ctx = p.newContext()
            for (c in s["cases"] as List<*>) {
                val case = c.asObject("case")
                @Suppress("UNCHECKED_CAST")
                val words = case["words"] as List<String>
                val expected = case["suggestions"] as List<*>
                var position = 0
                for ((j, _) in words.withIndex()) {
                    if (!TextNormalizer.isWord(words[j])) continue
                    ctx.setText(words.subList(0, j).joinToString(" ") + " ")
                    val got = ctx.suggest(k).map { it.word }
                    assertEquals(expected[position], got, "suggestions before word $j of ${words.joinToString(" ")}")
                    position++
                }
            }
        }
    }

    @Test
    fun `keyboard context reuses states and suggests only words`() {
        Predictor(Fixtures.bundle()).use { p ->
            val ctx = p.newContext()
            ctx.setText("I am going home")
            val partial = ctx.contextPieces
            ctx.setText("I am going home ")
            assertTrue(ctx.contextPieces.size > partial.size, "the completed word joins the context")
            val (direct, _) = p.run((listOf(2) + ctx.contextPieces).toIntArray())
            assertTrue(maxAbsDiff(direct.last(), ctx.logits) < 1e-6, "incremental state equals a full re-run")
            ctx.setText("I am ")
            val (shorter, _) = p.run((listOf(2) + ctx.contextPieces).toIntArray())
            assertTrue(maxAbsDiff(shorter.last(), ctx.logits) < 1e-6, "deleting text rewinds the state")
            val top = p.topPieces(ctx.logits, 3)
            assertEquals(3, top.size)
            assertTrue(top.all { it > 3 } && ctx.logits[top[0]] >= ctx.logits[top[1]])
            val words = ctx.suggest(5)
            assertEquals(5, words.size)
            for (w in words) assertTrue(TextNormalizer.isWord(w.word) && w.probability > 0 && w.probability <= 1, "$w")
            assertTrue(words.zipWithNext().all { (a, b) -> a.probability >= b.probability })
            ctx.reset()
            assertEquals(emptyList<Int>(), ctx.contextPieces)
        }
    }

    @Test
    fun `a partial word is completed, not used as context`() {
        val lexicon = setOf("going", "good", "go", "home", "house", "how", "don't", "dog")
        Predictor(Fixtures.bundle(), lexicon = lexicon).use { p ->
            val ctx = p.newContext()
            ctx.setText("I am G")
            assertEquals("g", ctx.partialWord)
            val before = ctx.contextPieces
            ctx.setText("I am ")
            assertEquals(before, ctx.contextPieces)
            ctx.setText("I am G")
            val words = ctx.suggest(3).map { it.word }
            assertTrue(words.isNotEmpty() && words.all { it.startsWith("g") && it in lexicon }, "$words")
            ctx.setText("see you at the ho")
            assertTrue(ctx.suggest(3).all { it.word.startsWith("ho") })
            ctx.setText("I don’")
            assertEquals("don'", ctx.partialWord)
            assertTrue(ctx.suggest(3).all { it.word.startsWith("don'") })
            ctx.setText("well, 'd")
            assertEquals("d", ctx.partialWord)
            ctx.setText("xyz qqq")
            assertEquals(emptyList<Suggestion>(), ctx.suggest(3))
        }
    }
}
