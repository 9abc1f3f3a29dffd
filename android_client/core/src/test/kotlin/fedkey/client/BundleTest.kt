package fedkey.client

import ai.onnxruntime.OrtLoggingLevel
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows
import org.junit.jupiter.api.io.TempDir
import java.io.File

class BundleTest {
    @TempDir
    lateinit var tmp: File

    private fun copyBundle(): File {
        Fixtures.expected()
        val dst = File(tmp, "bundle")
        TestPaths.bundle.copyRecursively(dst)
        return dst
    }

    @Test
    fun `loads and verifies the Python bundle`() {
        val bundle = Fixtures.bundle()
        val m = bundle.manifest
        assertEquals(7L, bundle.modelVersion)
        assertEquals(8, m.seqLen)
        assertEquals(listOf(0, 1, 2, 3), listOf(m.pad, m.unk, m.bos, m.eos))
        assertEquals(m.numParameters, bundle.readWeights().size)
        assertEquals(m.vocabSize * m.embedDim, bundle.param(bundle.readWeights(), "embedding").size)
        assertEquals(listOf("token", "h", "c"), m.graphs.getValue("predict").inputs.map { it.name })
        assertEquals(listOf("batch", m.embedDim), m.graphs.getValue("predict").inputs[1].shape)
        Bundle.load(TestPaths.bundle, expectedModelVersion = 7)
    }

    @Test
    fun `reads the exported lexicon and session config`() {
        val bundle = Fixtures.bundle()
        val expected = Fixtures.expected()["suggest"].asObject("suggest")["lexicon"] as List<*>
        assertEquals(expected, bundle.lexicon()!!.toList(), "lexicon.txt as Python exported it, in order")
        assertTrue(Manifest.LEXICON_FILE in bundle.manifest.files)
        assertEquals(mapOf("session.disable_quant_qdq" to "1"), bundle.sessionConfig("predict_int8"))
        for (role in listOf("predict", "train_step", "local_update")) assertEquals(emptyMap<String, String>(), bundle.sessionConfig(role))
    }

    @Test
    fun `session config makes the runtime dequantize int8 weights once at load`() {
        val bundle = Fixtures.bundle()
        fun optimizedGraph(config: Map<String, String>): String {
            val out = File(tmp, "optimized-${config.size}.onnx")
            Onnx.options(1, config).use { options ->
                options.setOptimizedModelFilePath(out.absolutePath)
                options.setSessionLogLevel(OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR) // not the "hardware specific" warning
                Onnx.env.createSession(bundle.file("predict_int8").absolutePath, options).close()
            }
            return out.readBytes().toString(Charsets.ISO_8859_1)
        }
        assertTrue("DequantizeLinear" !in optimizedGraph(bundle.sessionConfig("predict_int8")), "folded at load")
        assertTrue("DequantizeLinear" in optimizedGraph(emptyMap()), "without the entry the runtime dequantizes per call")
    }

    @Test
    fun `refuses a corrupted lexicon`() {
        val dir = copyBundle()
        File(dir, "lexicon.txt").appendText("extra\n")
        assertEquals("lexicon.txt", assertThrows<BundleException.CorruptedFile> { Bundle.load(dir) }.file)
    }

    @Test
    fun `reads an older manifest without lexicon and session config`() {
        val dir = copyBundle()
        val manifest = File(dir, "manifest.json")
        val text = manifest.readText()
            .replace(Regex(",\\s*\"session_config\": \\{[^}]*\\}"), "")
            .replace(Regex(",\\s*\"lexicon.txt\": \\{[^}]*\\}"), "")
        assertTrue("session_config" !in text && "lexicon.txt" !in text)
        manifest.writeText(text)
        val bundle = Bundle.load(dir)
        assertEquals(null, bundle.lexicon())
        assertEquals(emptyMap<String, String>(), bundle.sessionConfig("predict_int8"))
    }

    @Test
    fun `refuses a wrong model version`() {
        val e = assertThrows<BundleException.ModelVersionMismatch> { Bundle.load(copyBundle(), expectedModelVersion = 8) }
        assertEquals(8L, e.expected)
        assertEquals(7L, e.actual)
    }

    @Test
    fun `refuses a corrupted file with the same size`() {
        val dir = copyBundle()
        val f = File(dir, "weights.bin")
        val bytes = f.readBytes()
        bytes[100] = (bytes[100].toInt() xor 1).toByte()
        f.writeBytes(bytes)
        val e = assertThrows<BundleException.CorruptedFile> { Bundle.load(dir) }
        assertEquals("weights.bin", e.file)
        assertTrue("sha256" in e.message!!)
    }

    @Test
    fun `refuses a truncated file`() {
        val dir = copyBundle()
        val f = File(dir, "predict.int8.onnx")
        f.writeBytes(f.readBytes().copyOf(100))
        assertThrows<BundleException.CorruptedFile> { Bundle.load(dir) }
    }

    @Test
    fun `refuses a missing file`() {
        val dir = copyBundle()
        File(dir, "tokenizer.model").delete()
        assertEquals("tokenizer.model", assertThrows<BundleException.MissingFile> { Bundle.load(dir) }.file)
    }

    @Test
    fun `refuses other format versions, non-bundles and malformed manifests`() {
        val dir = copyBundle()
        val manifest = File(dir, "manifest.json")
        val text = manifest.readText()
        manifest.writeText(text.replace("\"format_version\": 1", "\"format_version\": 2"))
        assertThrows<BundleException.UnsupportedFormat> { Bundle.load(dir) }
        manifest.writeText(text.replace("fedkey-bundle", "other"))
        assertThrows<BundleException.NotABundle> { Bundle.load(dir) }
        manifest.writeText(text.substring(0, text.length / 2))
        assertThrows<BundleException.MalformedManifest> { Bundle.load(dir) }
        manifest.writeText(text.replace("\"seq_len\": 8", "\"seq_len\": \"8\""))
        assertThrows<BundleException.MalformedManifest> { Bundle.load(dir) }
        manifest.delete()
        assertThrows<BundleException.NotABundle> { Bundle.load(dir) }
    }

    @Test
    fun `refuses a layout that does not match the model shape`() {
        val dir = copyBundle()
        val manifest = File(dir, "manifest.json")
        manifest.writeText(manifest.readText().replace("\"hidden_dim\": 24", "\"hidden_dim\": 25"))
        assertThrows<BundleException.LayoutMismatch> { Bundle.load(dir) }
    }

    @Test
    fun `refuses an unlisted required file and path tricks`() {
        val dir = copyBundle()
        val manifest = File(dir, "manifest.json")
        val text = manifest.readText()
        manifest.writeText(text.replace("\"tokenizer.model\": {", "\"other.model\": {"))
        assertThrows<BundleException.MissingFile> { Bundle.load(dir) }
        manifest.writeText(text.replace("\"files\": {", "\"files\": {\"../x\": {\"sha256\": \"${"0".repeat(64)}\", \"size\": 0},"))
        assertThrows<BundleException.MalformedManifest> { Bundle.load(dir) }
    }

    @Test
    fun `json reader handles the usual shapes`() {
        val v = Json.parse("""{"a": [1, -2.5e1, true, null, "x\u00e9\n"], "b": {}}""").asObject("root")
        assertEquals(listOf(1L, -25.0, true, null, "xé\n"), v["a"])
        assertThrows<Json.ParseError> { Json.parse("{\"a\": 1,}") }
        assertThrows<Json.ParseError> { Json.parse("[1] 2") }
    }
}
