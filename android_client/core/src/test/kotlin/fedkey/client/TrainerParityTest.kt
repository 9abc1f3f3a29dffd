package fedkey.client

import fedkey.client.wire.StageConfig
import fedkey.client.wire.UpdateDecoder
import fedkey.client.wire.UpdateEncoder
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import kotlin.math.abs
import kotlin.math.sqrt

class TrainerParityTest {
    private val train by lazy { Fixtures.expected()["train"].asObject("train") }

    private fun ints(key: String) = (train[key] as List<*>).map { it as Long }.toLongArray()

    @Test
    fun `messages become the same batches as in Python`() {
        Trainer(Fixtures.bundle()).use { t ->
            @Suppress("UNCHECKED_CAST")
            val batches = t.batches(t.rows(train["messages"] as List<String>), (train["batch_size"] as Long).toInt())
            assertEquals((train["num_batches"] as Long).toInt(), batches.numBatches)
            assertArrayEquals(ints("tokens"), batches.tokens)
            assertArrayEquals(ints("targets"), batches.targets)
            assertArrayEquals(TestPaths.floats(train["mask"]), batches.mask)
        }
    }

    @Test
    fun `local update delta, losses and norm equal Python`() {
        val bundle = Fixtures.bundle()
        Trainer(bundle).use { t ->
            @Suppress("UNCHECKED_CAST")
            val batches = t.batches(t.rows(train["messages"] as List<String>), (train["batch_size"] as Long).toInt())
            val result = t.localUpdate(
                bundle.readWeights(), batches, steps = (train["steps"] as Long).toInt(), lr = (train["lr"] as Double).toFloat(),
                gradClip = (train["grad_clip"] as Double).toFloat(), deltaClip = (train["delta_clip"] as Double).toFloat(),
            )
            val delta = TestPaths.floats(train["delta"])
            val maxDiff = delta.indices.maxOf { abs(delta[it] - result.delta[it]) }
            assertTrue(maxDiff <= 1e-6, "delta differs by $maxDiff")
            val losses = TestPaths.floats(train["losses"])
            for (i in losses.indices) assertEquals(losses[i], result.losses[i], 1e-5f)
            assertEquals((train["delta_norm"] as Double).toFloat(), result.deltaNorm, 1e-5f)
            val norm = sqrt(result.delta.sumOf { it.toDouble() * it }).toFloat()
            assertTrue(norm <= (train["delta_clip"] as Double).toFloat() * (1 + 1e-5f))

            // The first step of train_step.onnx sees the same loss as local_update's first step.
            val (_, loss) = t.trainStep(bundle.readWeights(), batches, 0, 0.5f, 1f)
            assertEquals(result.losses[0], loss, 1e-5f)
        }
    }

    @Test
    fun `encoding Python's delta gives Python's message bytes`() {
        val enc = Fixtures.expected()["encode"].asObject("encode")
        val bundle = Fixtures.bundle()
        @Suppress("UNCHECKED_CAST")
        val stages = (enc["stages"] as List<Map<String, Any?>>).map { StageConfig.fromMap(it) }
        val encoder = UpdateEncoder(stages, bundle.numParameters)
        val out = encoder.encode(
            TestPaths.floats(train["delta"]), modelVersion = enc["model_version"] as Long, round = enc["round"] as Long,
            phoneId = enc["phone_id"] as Long, sharedSeed = (enc["shared_seed"] as String).toULong().toLong(),
            privateSeed = (enc["private_seed"] as String).toULong().toLong(),
        )
        assertEquals(enc["message_hex"], TestPaths.toHex(out.bytes))
        val decoded = UpdateDecoder.decode(out.bytes, bundle.numParameters)
        assertEquals(bundle.numParameters, decoded.delta.size)
    }

    @Test
    fun `phone flow end to end - train, encode, decode`() {
        val bundle = Fixtures.bundle()
        Trainer(bundle).use { t ->
            val result = t.train(listOf("see you at noon", "I love the dog"), epochs = 2, batchSize = 2, deltaClip = 0.1f)
            assertTrue(result.losses.all { it.isFinite() && it > 0 })
            val encoder = UpdateEncoder(StageConfig.listFromJson("""[{"kind": "clip", "norm": 0.1}, {"kind": "quantize", "bits": 8, "chunk": 256}]"""), bundle.numParameters)
            val update = encoder.encode(result.delta, bundle.modelVersion, round = 1, phoneId = 12345)
            val decoded = UpdateDecoder.decode(update.bytes, bundle.numParameters)
            val err = result.delta.indices.maxOf { abs(result.delta[it] - decoded.delta[it]) }
            assertTrue(err < 1e-3, "8-bit quantization error $err")
            assertTrue(update.bytes.size < 4 * bundle.numParameters / 3)
        }
    }
}
