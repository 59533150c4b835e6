// swift-tools-version:6.1
// libFuzzer targets (the message decoder, the gRPC message deframer), kept out of the main package: a fuzzing build instruments everything it builds, and the main
// package's code generator (a build tool) must not be linked against libFuzzer. `make fuzz` generates the message
// types with `protogen` into Sources/ProtoDecodeFuzz/Generated, then builds this package with
// `--sanitize=fuzzer -Xswiftc -sanitize=fuzzer,address`.
import PackageDescription

let package = Package(
    name: "ShoalFuzz",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "Shoal", path: "../..")
    ],
    targets: [
        .executableTarget(
            name: "ProtoDecodeFuzz",
            dependencies: [.product(name: "ProtoRuntime", package: "Shoal")]
        ),
        .executableTarget(
            name: "DeframerFuzz",
            dependencies: [.product(name: "RPCCore", package: "Shoal")]
        ),
    ],
    swiftLanguageModes: [.v6]
)
