// Android Studio project for the fedkey keyboard demo app. Not built on the fedkey build machines (no Android
// SDK, Google Maven or Gradle plugin portal there); the library it uses, core/, is built and tested with Maven.
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}
dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()
        mavenCentral()
    }
}
rootProject.name = "fedkey-android"
include(":app")
