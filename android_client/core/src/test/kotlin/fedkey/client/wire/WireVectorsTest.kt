package fedkey.client.wire

import fedkey.client.Json
import fedkey.client.TestPaths
import fedkey.client.TestPaths.floats
import fedkey.client.TestPaths.hex
import fedkey.client.TestPaths.toHex
import fedkey.client.asObject
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertNotNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.DynamicTest
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.TestFactory
import org.junit.jupiter.api.assertThrows
import java.io.File
import java.util.Random

/** Every vector of protocol/testdata/update_v1_vectors.json, bit for bit. */
class WireVectorsTest {
    private val file = File(TestPaths.testdata, "update_v1_vectors.json")
    private val root = Json.parse(file.readText()).asObject("vectors file")

    @Suppress("UNCHECKED_CAST")
    private val vectors = root["vectors"] as List<Map<String, Any?>>

    @Suppress("UNCHECKED_CAST")
    private val invalid = root["invalid"] as List<Map<String, Any?>>

    private fun seed(v: Map<String, Any?>, key: String) = (v[key] as String).toULong().toLong()

    /** Bit-exact float comparison (the vectors' decimals parse exactly to the float32 values). */
    private fun assertSameFloats(expected: FloatArray, actual: FloatArray, what: String) {
        assertEquals(expected.size, actual.size, "$what: length")
        for (i in expected.indices) {
            assertEquals(expected[i].toRawBits(), actual[i].toRawBits(), "$what[$i]: expected ${expected[i]}, got ${actual[i]}")
        }
    }

    private fun normalise(v: Any?): Any? = when (v) {
        is Number -> v.toDouble()
        is Map<*, *> -> v.entries.associate { (k, x) -> k to normalise(x) }
        is List<*> -> v.map { normalise(it) }
        else -> v
    }

    @Test
    fun `the file is the v1 vector set`() {
        assertEquals(1L, root["format_version"])
        assertTrue(vectors.size >= 10, "expected the full vector set, found ${vectors.size}")
        assertTrue(invalid.isNotEmpty())
    }

    @TestFactory
    fun `encode reproduces message_hex`(): List<DynamicTest> = vectors.filter { it["encode_reproducible"] == true }.map { v ->
        DynamicTest.dynamicTest(v["name"] as String) {
            @Suppress("UNCHECKED_CAST")
            val config = (v["stages"] as List<Map<String, Any?>>).map { StageConfig.fromMap(it) }
            val dim = (v["dim"] as Long).toInt()
            val encoder = UpdateEncoder(config, dim)
            val out = encoder.encode(
                floats(v["input"]), modelVersion = v["model_version"] as Long, round = v["round"] as Long,
                phoneId = v["phone_id"] as Long, sharedSeed = seed(v, "shared_seed"), privateSeed = seed(v, "private_seed"),
            )
            assertEquals(v["message_hex"], toHex(out.bytes))
            assertEquals((v["message_length"] as Long).toInt(), out.bytes.size)
            v["error_feedback_residual"]?.let { assertNotNull(out.residual); assertSameFloats(floats(it), out.residual!!, "residual") }
        }
    }

    @TestFactory
    fun `decode gives the decoded values and stage records`(): List<DynamicTest> = vectors.map { v ->
        DynamicTest.dynamicTest(v["name"] as String) {
            val dim = (v["dim"] as Long).toInt()
            val decoded = UpdateDecoder.decode(hex(v["message_hex"] as String), dim)
            assertSameFloats(floats(v["decoded"]), decoded.delta, "decoded")
            assertEquals(normalise(v["decoded_stage_records"]), normalise(decoded.stages))
            assertEquals(v["phone_id"], decoded.header.phoneId)
            assertEquals(v["round"], decoded.header.round)
            assertEquals(v["model_version"], decoded.header.modelVersion)
            assertEquals(seed(v, "shared_seed"), decoded.header.sharedSeed)
        }
    }

    @TestFactory
    fun `sparsifier intermediates`(): List<DynamicTest> = vectors.filter { "random_k_mask" in it || "top_k_indices" in it }.map { v ->
        DynamicTest.dynamicTest(v["name"] as String) {
            val dim = (v["dim"] as Long).toInt()
            (v["random_k_mask"] as List<*>?)?.let { mask ->
                val expected = mask.map { (it as Long).toInt() }.toIntArray()
                assertArrayEquals(expected, Kernels.randomKMask(seed(v, "shared_seed"), dim, expected.size))
            }
            (v["top_k_indices"] as List<*>?)?.let { idx ->
                val expected = idx.map { (it as Long).toInt() }.toIntArray()
                val x = floats(v["input"]).map { it.toDouble() }.toDoubleArray()
                assertArrayEquals(expected, Kernels.topKIndices(x, expected.size))
            }
        }
    }

    @TestFactory
    fun `invalid messages raise the named error`(): List<DynamicTest> = invalid.map { v ->
        DynamicTest.dynamicTest(v["name"] as String) {
            val err = runCatching { UpdateDecoder.decode(hex(v["message_hex"] as String), 37) }.exceptionOrNull()
            assertNotNull(err, "decoding must fail")
            assertEquals(v["error"], err!!::class.simpleName, "wrong error: $err")
            assertTrue(err is WireFormatError)
        }
    }

    @TestFactory
    fun `local DP vectors re-encode into decodable messages`(): List<DynamicTest> = vectors.filter { it["encode_reproducible"] == false }.map { v ->
        DynamicTest.dynamicTest(v["name"] as String) {
            // Noise is private randomness: encode with the recorded (σ or b, multiplier) and a seeded noise source,
            // then check that the header, records and sparsity pattern agree with the vector.
            @Suppress("UNCHECKED_CAST")
            val records = v["decoded_stage_records"] as List<Map<String, Any?>>
            val config = records.map { r ->
                when (r["kind"]) {
                    "gaussian_noise" -> StageConfig.GaussianNoise(r["scale"] as Double, r["noise_multiplier"] as Double)
                    "laplace_noise" -> StageConfig.LaplaceNoise(r["scale"] as Double, r["noise_multiplier"] as Double)
                    else -> StageConfig.fromMap(r)
                }
            }
            val dim = (v["dim"] as Long).toInt()
            val out = UpdateEncoder(config, dim).encode(
                floats(v["input"]), v["model_version"] as Long, v["round"] as Long, v["phone_id"] as Long,
                sharedSeed = seed(v, "shared_seed"), privateSeed = seed(v, "private_seed"), noise = Random(7),
            )
            val expected = hex(v["message_hex"] as String)
            val recordsEnd = 37 + records.sumOf { 2 + (expectedRecordLength(it["kind"] as String)) }
            assertEquals(toHex(expected.copyOfRange(0, recordsEnd)), toHex(out.bytes.copyOfRange(0, recordsEnd)))
            val decoded = UpdateDecoder.decode(out.bytes, dim)
            assertEquals(normalise(records), normalise(decoded.stages))
            if ("random_k_mask" in v) {
                val mask = (v["random_k_mask"] as List<*>).map { (it as Long).toInt() }.toSet()
                decoded.delta.forEachIndexed { i, x -> if (i !in mask) assertEquals(0f, x) }
            }
        }
    }

    private fun expectedRecordLength(kind: String) = when (kind) {
        "clip" -> 6; "gaussian_noise", "laplace_noise" -> 16; "random_k" -> 5; "top_k" -> 4
        "error_feedback" -> 0; "rotate" -> 1; else -> 5
    }

    @Test
    fun `splitmix64 reference outputs`() {
        val k = 1234567L
        assertEquals("6457827717110365317", Prng.output(k, 0).toULong().toString())
        assertEquals("3203168211198807973", Prng.output(k, 1).toULong().toString())
        assertEquals("9817491932198370423", Prng.output(k, 2).toULong().toString())
    }

    @Test
    fun `bounded draws stay in range and match the 128-bit product`() {
        val rnd = Random(1)
        repeat(10_000) {
            val r = rnd.nextLong()
            val n = 1L + (rnd.nextLong() ushr 33)
            val exact = java.math.BigInteger(r.toULong().toString()).multiply(java.math.BigInteger.valueOf(n)).shiftRight(64).toLong()
            assertEquals(exact, Prng.toBounded(r, n))
        }
    }

    @Test
    fun `round trips with every stage kind and typed rejections`() {
        val rnd = Random(3)
        val dim = 1000
        val x = FloatArray(dim) { (rnd.nextGaussian() * 0.1).toFloat() }
        val config = listOf(
            StageConfig.Clip(1.0), StageConfig.ErrorFeedback, StageConfig.TopK(fraction = 0.1),
            StageConfig.Rotate(64), StageConfig.Quantize(8, 128),
        )
        val enc = UpdateEncoder(config, dim)
        val out = enc.encode(x, 5, 9, 42)
        val dec = UpdateDecoder.decode(out.bytes, dim)
        assertEquals(42L, dec.header.phoneId)
        assertEquals(dim, dec.delta.size)
        // residual + decoded = clipped input (error feedback is exact up to float32 rounding)
        val r = out.residual!!
        val clipNorm = Math.sqrt(x.sumOf { it.toDouble() * it.toDouble() })
        val scale = if (clipNorm > 1.0) 1.0 / clipNorm else 1.0
        for (i in 0 until dim) assertEquals(x[i] * scale, (r[i] + dec.delta[i]).toDouble(), 1e-5)
        assertThrows<LayoutMismatchError> { UpdateDecoder.decode(out.bytes, dim + 1) }
        assertThrows<TruncatedMessageError> { UpdateDecoder.decode(out.bytes.copyOf(20), dim) }
        assertThrows<PipelineInputError> { UpdateEncoder(listOf(StageConfig.Quantize(), StageConfig.Clip(1.0)), dim) }
        assertThrows<PipelineInputError> {
            UpdateEncoder(listOf(StageConfig.Clip(1.0), StageConfig.TopK(k = 5), StageConfig.GaussianNoise(1.0, 0.5)), dim)
        }
        assertThrows<PipelineInputError> { enc.encode(FloatArray(dim) { Float.NaN }, 1, 1, 1) }
    }

    @Test
    fun `pipeline config parses from the Python JSON shape`() {
        val cfg = StageConfig.listFromJson(
            """[{"kind": "clip", "norm": 0.5, "adaptive": {"target_quantile": 0.5}}, {"kind": "random_k", "fraction": 0.25},
               {"kind": "quantize", "bits": 2}]""",
        )
        assertEquals(StageConfig.Clip(0.5, 2, true), cfg[0])
        assertEquals(12, (cfg[1] as StageConfig.RandomK).kept(48))
        assertEquals(StageConfig.Quantize(2, 512), cfg[2])
    }
}

class CalibrationTest {
    private val vectors = Json.parse(File(TestPaths.testdata, "update_v1_vectors.json").readText()).asObject("file")["vectors"] as List<*>

    @Test
    fun `local DP stages in their epsilon form calibrate like Python`() {
        for (v in vectors.map { it.asObject("vector") }.filter { it["encode_reproducible"] == false }) {
            @Suppress("UNCHECKED_CAST")
            val config = (v["stages"] as List<Map<String, Any?>>).map { StageConfig.fromMap(it) }
            val dim = (v["dim"] as Long).toInt()
            val out = UpdateEncoder(config, dim).encode(
                floats(v["input"]), 3, 1, 1, sharedSeed = 1, privateSeed = 2, noise = Random(1),
            )
            val got = UpdateDecoder.decode(out.bytes, dim).stages.first { it["kind"].toString().endsWith("_noise") }
            @Suppress("UNCHECKED_CAST")
            val want = (v["decoded_stage_records"] as List<Map<String, Any?>>).first { it["kind"].toString().endsWith("_noise") }
            for (key in listOf("scale", "noise_multiplier")) {
                val a = want[key] as Double
                val b = got[key] as Double
                assertTrue(Math.abs(a - b) <= 1e-10 * a, "${v["name"]} $key: Python $a, Kotlin $b")
            }
        }
    }

    @Test
    fun `analytic gaussian sigma meets delta and is tight`() {
        for ((eps, delta) in listOf(0.5 to 1e-5, 1.0 to 1e-10, 4.0 to 1e-5, 10.0 to 1e-6)) {
            val sigma = Calibration.analyticGaussianSigma(eps, delta, 2.0)
            assertTrue(Calibration.gaussianDelta(sigma, eps, 2.0) <= delta)
            assertTrue(Calibration.gaussianDelta(sigma * (1 - 1e-9), eps, 2.0) > delta)
        }
    }
}
