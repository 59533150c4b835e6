// swift-tools-version:6.1
// Shoal's benchmarks: a separate package so that benchmark-only code stays out of the product graph.
// `make bench-codec` (from the repository root) builds and runs them beside the anchors in ../../shared/anchors.
import PackageDescription

let package = Package(
    name: "ShoalBenchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "Shoal", path: "..")
    ],
    targets: [
        // Decode/encode throughput on the codec anchor corpus; same protocol and output lines as the anchors'
        // harnesses, so one aggregate table holds them all.
        .executableTarget(
            name: "CodecBench",
            dependencies: [.product(name: "ProtoRuntime", package: "Shoal")],
            plugins: [.plugin(name: "ProtoGenPlugin", package: "Shoal")]
        ),
        // bench.v1.Echo on ShoalRPC, for the h2load scenarios of ../shared/anchors/rpc/load.sh.
        .executableTarget(
            name: "EchoServer",
            dependencies: [.product(name: "ShoalRPC", package: "Shoal")],
            plugins: [.plugin(name: "ProtoGenPlugin", package: "Shoal")]
        ),
        // 100,000 calls of mixed outcomes against a server process, with its memory after every 10,000.
        .executableTarget(
            name: "RPCChurn",
            dependencies: [.product(name: "ShoalRPC", package: "Shoal")],
            plugins: [.plugin(name: "ProtoGenPlugin", package: "Shoal")]
        ),
    ],
    swiftLanguageModes: [.v6]
)
