plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
}

android {
    namespace = "dev.fedkey.app"
    compileSdk = 35

    defaultConfig {
        applicationId = "dev.fedkey.app"
        minSdk = 26
        targetSdk = 35
        versionCode = 1
        versionName = "0.1.0"
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions {
        jvmTarget = "17"
    }

    sourceSets {
        getByName("main") {
            // The library is used unchanged: its Kotlin sources are compiled into the app. (Alternative:
            // `mvn -f ../core/pom.xml install` and depend on dev.fedkey:fedkey-client-core:0.1.0 from mavenLocal(),
            // excluding com.microsoft.onnxruntime:onnxruntime — the desktop jar — in favour of onnxruntime-android.)
            java.srcDir("../core/src/main/kotlin")
        }
    }
}

dependencies {
    implementation("org.jetbrains.kotlin:kotlin-stdlib:2.4.21")
    // Same ai.onnxruntime API as the desktop com.microsoft.onnxruntime:onnxruntime the core is tested with.
    implementation("com.microsoft.onnxruntime:onnxruntime-android:1.29.0")
}
