package fedkey.client

import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtSession
import java.nio.FloatBuffer
import java.nio.LongBuffer

/** ONNX Runtime helpers shared by [Predictor] and [Trainer] (the same `ai.onnxruntime` API on desktop and Android). */
internal object Onnx {
    val env: OrtEnvironment get() = OrtEnvironment.getEnvironment()

    /** CPU session options: [threads] intra-op threads (one on a phone, docs/artifacts.md §7) and [config] entries. */
    fun options(threads: Int = 1, config: Map<String, String> = emptyMap()): OrtSession.SessionOptions {
        val options = OrtSession.SessionOptions()
        options.setIntraOpNumThreads(threads)
        options.setInterOpNumThreads(1)
        options.setExecutionMode(OrtSession.SessionOptions.ExecutionMode.SEQUENTIAL)
        options.setOptimizationLevel(OrtSession.SessionOptions.OptLevel.ALL_OPT)
        for ((key, value) in config) options.addConfigEntry(key, value)
        return options
    }

    /** A session for graph [role] of [bundle] with the session config its manifest records. */
    fun session(bundle: Bundle, role: String, threads: Int = 1): OrtSession =
        options(threads, bundle.sessionConfig(role)).use { env.createSession(bundle.file(role).absolutePath, it) }

    fun longs(values: LongArray, shape: LongArray): OnnxTensor = OnnxTensor.createTensor(env, LongBuffer.wrap(values), shape)
    fun floats(values: FloatArray, shape: LongArray): OnnxTensor = OnnxTensor.createTensor(env, FloatBuffer.wrap(values), shape)
    fun scalar(value: Float): OnnxTensor = floats(floatArrayOf(value), longArrayOf())
    fun scalar(value: Long): OnnxTensor = longs(longArrayOf(value), longArrayOf())

    fun floatsOf(result: OrtSession.Result, name: String): FloatArray {
        val tensor = result.get(name).orElseThrow { IllegalStateException("graph has no output '$name'") } as OnnxTensor
        val buf = tensor.floatBuffer
        return FloatArray(buf.remaining()).also { buf.get(it) }
    }

    /** Run [session] on named inputs, closing the input tensors afterwards. */
    fun <T> run(session: OrtSession, inputs: Map<String, OnnxTensor>, read: (OrtSession.Result) -> T): T {
        try {
            return session.run(inputs).use(read)
        } finally {
            inputs.values.forEach { it.close() }
        }
    }
}
