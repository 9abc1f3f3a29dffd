package fedkey.client

import java.io.File

/** Where the tests find the shared protocol vectors and the Python-made fixtures (set by the pom). */
object TestPaths {
    val testdata: File = File(System.getProperty("fedkey.testdata") ?: "../../protocol/testdata")
    val fixtures: File = File(System.getProperty("fedkey.fixtures") ?: "target/fixtures")
    val bundle: File get() = File(fixtures, "bundle")
    val expected: File get() = File(fixtures, "expected.json")

    fun hex(s: String): ByteArray = ByteArray(s.length / 2) { s.substring(2 * it, 2 * it + 2).toInt(16).toByte() }
    fun toHex(b: ByteArray): String = b.joinToString("") { "%02x".format(it) }

    fun floats(v: Any?): FloatArray = (v as List<*>).map { (it as Number).toDouble().toFloat() }.toFloatArray()
    fun doubles(v: Any?): DoubleArray = (v as List<*>).map { (it as Number).toDouble() }.toDoubleArray()
}
