// swift-tools-version:6.1
import PackageDescription

let strictSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("InternalImportsByDefault"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

let package = Package(
    name: "Shoal",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "ProtoRuntime", targets: ["ProtoRuntime"]),
        .library(name: "ProtoWellKnownTypes", targets: ["ProtoWellKnownTypes"]),
        .library(name: "ProtoGenCore", targets: ["ProtoGenCore"]),
        .executable(name: "protogen", targets: ["protogen"]),
        .plugin(name: "ProtoGenPlugin", targets: ["ProtoGenPlugin"]),
    ],
    targets: [
        // The proto3 wire codec every generated message uses.
        .target(name: "ProtoRuntime", swiftSettings: strictSettings),
        // gRPC semantics independent of codec and transport: status codes, errors, message framing.
        .target(name: "RPCCore", swiftSettings: strictSettings),
        // .proto parser, resolver, IR and Swift renderer: a pure library.
        .target(name: "ProtoGenCore", swiftSettings: strictSettings),
        .executableTarget(
            name: "protogen",
            dependencies: ["ProtoGenCore"],
            path: "Sources/ProtoGen",
            swiftSettings: strictSettings
        ),
        .plugin(
            name: "ProtoGenPlugin",
            capability: .buildTool(),
            dependencies: ["protogen"],
            path: "Sources/ProtoGenPlugin"
        ),
        // google.protobuf.Empty, Timestamp and Duration, generated from Protos/google/protobuf.
        .target(
            name: "ProtoWellKnownTypes",
            dependencies: ["ProtoRuntime"],
            swiftSettings: strictSettings,
            plugins: ["ProtoGenPlugin"]
        ),

        // Test support: protobuf-c's generated C for the conformance protos (reference implementation).
        .target(
            name: "CProtobufCReference",
            path: "Tests/CProtobufCReference",
            linkerSettings: [.linkedLibrary("protobuf-c")]
        ),
        .target(
            name: "ConformanceMessages",
            dependencies: ["ProtoRuntime", "ProtoWellKnownTypes"],
            path: "Tests/ConformanceMessages",
            swiftSettings: strictSettings,
            plugins: ["ProtoGenPlugin"]
        ),
        .testTarget(
            name: "ProtoRuntimeTests",
            dependencies: ["ProtoRuntime", "ProtoWellKnownTypes", "ConformanceMessages", "CProtobufCReference"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "RPCCoreTests",
            dependencies: ["RPCCore"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "ProtoGenCoreTests",
            dependencies: ["ProtoGenCore", "ProtoRuntime", "ConformanceMessages"],
            exclude: ["Golden"],
            swiftSettings: strictSettings
        ),
    ],
    swiftLanguageModes: [.v6]
)
