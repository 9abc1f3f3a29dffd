// Plugin versions: pick the ones your Android Studio offers; these were not resolvable on the build machines.
plugins {
    id("com.android.application") version "8.7.3" apply false
    id("org.jetbrains.kotlin.android") version "2.4.21" apply false
}
