package fedkey.client

import java.io.File
import java.io.FileInputStream
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.security.MessageDigest

/** Why a bundle was refused (docs/artifacts.md §2, "Verifying a bundle"). Keep the previous bundle when this is thrown. */
sealed class BundleException(message: String) : Exception(message) {
    /** manifest.json is missing or is not a fedkey bundle manifest. */
    class NotABundle(message: String) : BundleException(message)

    /** The manifest's `format_version` is not 1. */
    class UnsupportedFormat(val formatVersion: Any?, message: String) : BundleException(message)

    /** The manifest is not valid JSON or a field is missing / has the wrong type. */
    class MalformedManifest(message: String) : BundleException(message)

    /** The bundle holds another model version than the one the caller expects. */
    class ModelVersionMismatch(val expected: Long, val actual: Long, message: String) : BundleException(message)

    /** The parameter layout or the graph list does not match the model shape / format. */
    class LayoutMismatch(message: String) : BundleException(message)

    /** A listed or required file is missing. */
    class MissingFile(val file: String, message: String) : BundleException(message)

    /** A file's size or SHA-256 differs from the manifest (corrupted, truncated or from another bundle). */
    class CorruptedFile(val file: String, message: String) : BundleException(message)
}

/** One tensor of weights.bin: row-major float32 at [offset] bytes. */
data class ParamSpec(val name: String, val shape: List<Int>, val offset: Long, val numel: Int)

/** An ONNX graph input/output as the manifest lists it; a dimension is an Int (fixed) or a String (dynamic). */
data class TensorSpec(val name: String, val dtype: String, val shape: List<Any>)

/**
 * A graph of the bundle: its file, inputs and outputs, and the ONNX Runtime session config entries to set when
 * loading it (`OrtSession.SessionOptions.addConfigEntry`; e.g. `session.disable_quant_qdq = "1"` for the int8
 * predictor, which makes the runtime dequantize its int8 weights once at load instead of on every key event).
 */
data class GraphSpec(
    val file: String,
    val inputs: List<TensorSpec>,
    val outputs: List<TensorSpec>,
    val sessionConfig: Map<String, String> = emptyMap(),
)

data class FileEntry(val sha256: String, val size: Long)

/** The parsed `manifest.json` (format `fedkey-bundle`, version 1). */
class Manifest(
    val formatVersion: Int,
    val modelVersion: Long,
    val vocabSize: Int,
    val embedDim: Int,
    val hiddenDim: Int,
    val numParameters: Int,
    val parameters: List<ParamSpec>,
    val seqLen: Int,
    val pad: Int,
    val unk: Int,
    val bos: Int,
    val eos: Int,
    val opset: Int,
    val graphs: Map<String, GraphSpec>,
    val files: Map<String, FileEntry>,
) {
    companion object {
        const val FORMAT = "fedkey-bundle"
        const val FORMAT_VERSION = 1
        val GRAPH_FILES = mapOf(
            "predict" to "predict.onnx",
            "predict_int8" to "predict.int8.onnx",
            "train_step" to "train_step.onnx",
            "local_update" to "local_update.onnx",
        )
        const val WEIGHTS_FILE = "weights.bin"
        const val TOKENIZER_FILE = "tokenizer.model"
        const val LEXICON_FILE = "lexicon.txt"
        const val MANIFEST_FILE = "manifest.json"
        private val SHA256 = Regex("^[0-9a-f]{64}$")

        /** Parse manifest JSON text; checks format and version first, then every field's type. */
        fun parse(text: String): Manifest {
            val raw = try {
                Json.parse(text)
            } catch (e: Json.ParseError) {
                throw BundleException.MalformedManifest("manifest.json is not valid JSON: ${e.message}")
            }
            val root = raw as? Map<*, *> ?: throw BundleException.NotABundle("manifest.json is not a JSON object")
            if (root["format"] != FORMAT) throw BundleException.NotABundle("manifest.json is not a fedkey bundle manifest (format must be '$FORMAT')")
            val fv = root["format_version"]
            if (fv != FORMAT_VERSION.toLong()) {
                throw BundleException.UnsupportedFormat(fv, "bundle format version $fv is not supported (this library reads version $FORMAT_VERSION)")
            }
            try {
                @Suppress("UNCHECKED_CAST")
                val m = root as Map<String, Any?>
                val model = m.obj("model")
                val special = (m["special_ids"] ?: mapOf("pad" to 0L, "unk" to 1L, "bos" to 2L, "eos" to 3L)).asObject("special_ids")
                if (m["weights_byte_order"] != null && m["weights_byte_order"] != "little") {
                    throw IllegalArgumentException("weights_byte_order must be 'little'")
                }
                val params = m.list("parameters").map { p ->
                    val o = p.asObject("parameter")
                    if (o["dtype"] != null && o["dtype"] != "float32") throw IllegalArgumentException("parameter dtype must be float32")
                    ParamSpec(o.str("name"), o.list("shape").map { (it as Long).toInt() }, o.long("offset"), o.int("numel"))
                }
                val graphs = m.obj("graphs").mapValues { (_, g) ->
                    val o = g.asObject("graph")
                    fun specs(key: String) = o.list(key).map { t ->
                        val s = t.asObject("tensor")
                        TensorSpec(s.str("name"), s.str("dtype"), s.list("shape").map { d -> if (d is Long) d.toInt() else d as String })
                    }
                    // Optional: manifests written before it existed have none.
                    val config = (o["session_config"] ?: emptyMap<String, Any?>()).asObject("session_config")
                        .mapValues { (key, v) -> v as? String ?: throw IllegalArgumentException("session_config.$key must be a string") }
                    GraphSpec(o.str("file"), specs("inputs"), specs("outputs"), config)
                }
                val files = m.obj("files").mapValues { (name, f) ->
                    val o = f.asObject("file entry")
                    val sha = o.str("sha256")
                    if (!SHA256.matches(sha)) throw IllegalArgumentException("files.$name.sha256 is not 64 lowercase hex digits")
                    val size = o.long("size")
                    if (size < 0) throw IllegalArgumentException("files.$name.size is negative")
                    FileEntry(sha, size)
                }
                val modelVersion = m.long("model_version")
                if (modelVersion < 0) throw IllegalArgumentException("model_version must be >= 0")
                val seqLen = m.int("seq_len")
                if (seqLen < 1) throw IllegalArgumentException("seq_len must be >= 1")
                return Manifest(
                    FORMAT_VERSION, modelVersion, model.int("vocab_size"), model.int("embed_dim"), model.int("hidden_dim"),
                    model.int("num_parameters"), params, seqLen, special.int("pad"), special.int("unk"),
                    special.int("bos"), special.int("eos"), m.int("opset"), graphs, files,
                )
            } catch (e: BundleException) {
                throw e
            } catch (e: RuntimeException) {
                throw BundleException.MalformedManifest("manifest.json is malformed: ${e.message}")
            }
        }

        /** The weights.bin layout docs/artifacts.md §3 derives from V, E, H. */
        fun expectedLayout(v: Int, e: Int, h: Int): List<ParamSpec> {
            val shapes = listOf(
                "embedding" to listOf(v, e), "w_x" to listOf(e, 3 * h), "w_h" to listOf(e, 3 * h),
                "b" to listOf(3 * h), "w_proj" to listOf(h, e), "out_bias" to listOf(v),
            )
            var offset = 0L
            return shapes.map { (name, shape) ->
                val numel = shape.fold(1L) { a, b -> a * b }
                ParamSpec(name, shape, offset, numel.toInt()).also { offset += 4 * numel }
            }
        }
    }
}

/**
 * A verified on-device bundle: a folder with the ONNX graphs, weights.bin, tokenizer.model and manifest.json.
 *
 *     val bundle = Bundle.load(File(context.filesDir, "bundle"), expectedModelVersion = announced)
 *
 * [load] does every check of docs/artifacts.md §2 (format and version, model version, size and SHA-256 of
 * every file, the six required files, the weight layout) and throws a [BundleException] naming the problem.
 */
class Bundle private constructor(val root: File, val manifest: Manifest) {
    val modelVersion: Long get() = manifest.modelVersion
    val numParameters: Int get() = manifest.numParameters

    /** The path of a graph by role ("predict", "predict_int8", "train_step", "local_update") or of a listed file. */
    fun file(roleOrName: String): File {
        val name = Manifest.GRAPH_FILES[roleOrName] ?: roleOrName
        if (name !in manifest.files) throw BundleException.MissingFile(name, "bundle $root has no file '$name'")
        return File(root, name)
    }

    /** weights.bin as a float array in the manifest's layout (the server's model for this round). */
    fun readWeights(): FloatArray {
        val bytes = file(Manifest.WEIGHTS_FILE).readBytes()
        val fb = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer()
        return FloatArray(fb.remaining()).also { fb.get(it) }
    }

    /** One named tensor of a flat vector in this layout (a copy), e.g. `param(weights, "embedding")`. */
    fun param(flat: FloatArray, name: String): FloatArray {
        val spec = manifest.parameters.firstOrNull { it.name == name } ?: throw IllegalArgumentException("no parameter '$name'")
        val start = (spec.offset / 4).toInt()
        return flat.copyOfRange(start, start + spec.numel)
    }

    /** The SentencePiece tokenizer shipped with this bundle. */
    fun tokenizer(): Tokenizer = Tokenizer.load(file(Manifest.TOKENIZER_FILE).readBytes())

    /**
     * The word list for whole-word suggestions, in file order: `lexicon.txt` (UTF-8, one normalised word per line),
     * which every fedkey exporter writes and [load] verifies like every listed file; null for an older bundle
     * whose manifest does not list it (then any normalised word may be suggested).
     */
    fun lexicon(): Set<String>? =
        if (Manifest.LEXICON_FILE in manifest.files) {
            file(Manifest.LEXICON_FILE).readLines(Charsets.UTF_8).map { it.trim() }.filter { it.isNotEmpty() }.toSet()
        } else {
            null
        }

    /** The session config entries the manifest asks for when loading graph [role] (empty if none). */
    fun sessionConfig(role: String): Map<String, String> =
        manifest.graphs[role]?.sessionConfig ?: throw BundleException.MissingFile(role, "bundle $root has no graph '$role'")

    companion object {
        /** Read and verify a bundle folder; throws [BundleException]. */
        @JvmStatic
        @JvmOverloads
        fun load(root: File, expectedModelVersion: Long? = null): Bundle {
            val manifestFile = File(root, Manifest.MANIFEST_FILE)
            if (!manifestFile.isFile) throw BundleException.NotABundle("$root is not a bundle: manifest.json is missing")
            val manifest = Manifest.parse(manifestFile.readText(Charsets.UTF_8))
            if (expectedModelVersion != null && manifest.modelVersion != expectedModelVersion) {
                throw BundleException.ModelVersionMismatch(
                    expectedModelVersion, manifest.modelVersion,
                    "bundle $root holds model version ${manifest.modelVersion}, expected $expectedModelVersion",
                )
            }
            val layout = Manifest.expectedLayout(manifest.vocabSize, manifest.embedDim, manifest.hiddenDim)
            if (manifest.parameters != layout) {
                throw BundleException.LayoutMismatch("parameter layout does not match model shape V=${manifest.vocabSize} E=${manifest.embedDim} H=${manifest.hiddenDim}")
            }
            val total = layout.sumOf { it.numel.toLong() }
            if (manifest.numParameters.toLong() != total) {
                throw BundleException.LayoutMismatch("model.num_parameters is ${manifest.numParameters}, the layout holds $total")
            }
            val graphs = manifest.graphs.mapValues { it.value.file }
            if (graphs != Manifest.GRAPH_FILES) throw BundleException.LayoutMismatch("graphs $graphs do not match the format's ${Manifest.GRAPH_FILES}")
            val required = Manifest.GRAPH_FILES.values + Manifest.WEIGHTS_FILE + Manifest.TOKENIZER_FILE
            required.firstOrNull { it !in manifest.files }?.let {
                throw BundleException.MissingFile(it, "manifest.json does not list required file $it")
            }
            for ((name, entry) in manifest.files) {
                if (name.contains('/') || name.contains('\\') || name == "." || name == "..") {
                    throw BundleException.MalformedManifest("manifest lists '$name', which is not a plain file name")
                }
                val f = File(root, name)
                if (!f.isFile) throw BundleException.MissingFile(name, "bundle $root: file $name is missing")
                if (f.length() != entry.size) {
                    throw BundleException.CorruptedFile(name, "bundle $root: $name has ${f.length()} bytes, the manifest says ${entry.size}")
                }
                if (sha256(f) != entry.sha256) {
                    throw BundleException.CorruptedFile(name, "bundle $root: $name is corrupted or from another bundle (sha256 mismatch)")
                }
            }
            if (manifest.files.getValue(Manifest.WEIGHTS_FILE).size != 4L * manifest.numParameters) {
                throw BundleException.LayoutMismatch("weights.bin must hold 4 × ${manifest.numParameters} bytes")
            }
            return Bundle(root, manifest)
        }

        fun sha256(file: File): String {
            val digest = MessageDigest.getInstance("SHA-256")
            FileInputStream(file).use { input ->
                val buf = ByteArray(1 shl 16)
                while (true) {
                    val n = input.read(buf)
                    if (n < 0) break
                    digest.update(buf, 0, n)
                }
            }
            return digest.digest().joinToString("") { "%02x".format(it) }
        }
    }
}
