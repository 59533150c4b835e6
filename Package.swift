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
        .library(name: "RPCCore", targets: ["RPCCore"]),
        .library(name: "ShoalRPC", targets: ["ShoalRPC"]),
        .executable(name: "interop-server", targets: ["interop-server"]),
        .executable(name: "scheduler", targets: ["scheduler"]),
        .executable(name: "harpoon", targets: ["harpoon"]),
        .executable(name: "event-router", targets: ["event-router"]),
        .executable(name: "hypervisor", targets: ["hypervisor"]),
        .executable(name: "reserved-ip", targets: ["reserved-ip"]),
        .executable(name: "aggregator", targets: ["aggregator"]),
        .executable(name: "shoal-local", targets: ["shoal-local"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1", traits: []),
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.8.0"),
        // Already in the graph through Hummingbird; named here because every service runs in a ServiceGroup.
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        // Metrics: the swift-metrics API (already in the graph through Hummingbird) with a Prometheus backend.
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        // PostgreSQL: the store of deployments beyond one machine (Harpoon and the orchestrator, several replicas each).
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
        // A request's id and trace travel across services in a ServiceContext (already in the graph through
        // Hummingbird), its trace as W3C trace context (`traceparent`).
        .package(url: "https://github.com/apple/swift-service-context.git", from: "1.5.1"),
        .package(url: "https://github.com/swift-otel/swift-w3c-trace-context.git", from: "1.0.0"),
    ],
    targets: [
        // The proto3 wire codec every generated message uses.
        .target(name: "ProtoRuntime", swiftSettings: strictSettings),
        // gRPC semantics independent of codec and transport: status codes, errors, message framing.
        .target(name: "RPCCore", swiftSettings: strictSettings),
        // libnghttp2: the HTTP/2 state machine under ShoalRPC.
        .systemLibrary(name: "CNGHTTP2", pkgConfig: "libnghttp2", providers: [.apt(["libnghttp2-dev"])]),
        // OpenSSL: TLS for ShoalRPC.
        .systemLibrary(name: "COpenSSL", pkgConfig: "openssl", providers: [.apt(["libssl-dev"])]),
        // zlib: gzip message compression.
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        // gRPC over HTTP/2: nghttp2 sessions driven by SwiftNIO channels, servers, clients and call semantics.
        .target(
            name: "ShoalRPC",
            dependencies: [
                "RPCCore", "ProtoRuntime", "CNGHTTP2", "CZlib", "COpenSSL",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ],
            swiftSettings: strictSettings,
            plugins: ["ProtoGenPlugin"]
        ),
        // grpc.testing.TestService from gRPC's interop test descriptions, and the server gRPC's interop clients call.
        .target(
            name: "InteropService",
            dependencies: ["ShoalRPC"],
            swiftSettings: strictSettings,
            plugins: ["ProtoGenPlugin"]
        ),
        .executableTarget(
            name: "interop-server",
            dependencies: ["InteropService", "ShoalRPC"],
            path: "Sources/InteropServer",
            swiftSettings: strictSettings
        ),
        // Scheduler V2: the API (generated only), the service library, the executable.
        .target(
            name: "SchedulerAPI",
            dependencies: ["ShoalRPC", "ProtoWellKnownTypes"],
            swiftSettings: strictSettings,
            plugins: ["ProtoGenPlugin"]
        ),
        .target(
            name: "Scheduler",
            dependencies: [
                "SchedulerAPI", "RequestContext", .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSettings
        ),
        .executableTarget(
            name: "scheduler",
            dependencies: [
                "Scheduler", "SchedulerAPI", "HarpoonAPI", "ServiceRuntime",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Sources/SchedulerServer",
            swiftSettings: strictSettings
        ),
        // Harpoon: the API (generated only) and the service library (store, outbox worker, RPC handlers).
        .target(
            name: "HarpoonAPI",
            dependencies: ["SchedulerAPI"],
            swiftSettings: strictSettings,
            plugins: ["ProtoGenPlugin"]
        ),
        .target(
            name: "Harpoon",
            dependencies: [
                "HarpoonAPI", "EventRouterAPI", "SQLiteSupport", "PostgresSupport", "RequestContext",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "ServiceContextModule", package: "swift-service-context"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
            ],
            swiftSettings: strictSettings
        ),
        // What the PostgreSQL stores share: the database address, a pool that runs while the store lives, versioned
        // migrations that several replicas can run at once, change notifications.
        .target(
            name: "PostgresSupport",
            dependencies: [
                .product(name: "PostgresNIO", package: "postgres-nio"), .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSettings
        ),
        // What the SQLite stores share: opening a service's database, point reads.
        .target(
            name: "SQLiteSupport",
            dependencies: [
                .product(name: "GRDB", package: "GRDB.swift"), .product(name: "GRDBSQLite", package: "GRDB.swift"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: strictSettings
        ),
        // A request's id and trace as a task carries them (ServiceContext) and as calls carry them (gRPC metadata).
        .target(
            name: "RequestContext",
            dependencies: [
                "RPCCore", .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceContextModule", package: "swift-service-context"),
                .product(name: "W3CTraceContext", package: "swift-w3c-trace-context"),
            ],
            swiftSettings: strictSettings
        ),
        // OTLP's trace export messages and service, generated from Protos/opentelemetry.
        .target(
            name: "OTLPAPI", dependencies: ["ShoalRPC"], swiftSettings: strictSettings, plugins: ["ProtoGenPlugin"]),
        // Spans exported to an OTLP collector over Shoal's own gRPC.
        .target(
            name: "ShoalTracing",
            dependencies: [
                "OTLPAPI", "RequestContext", "ShoalRPC", .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "W3CTraceContext", package: "swift-w3c-trace-context"),
            ],
            swiftSettings: strictSettings
        ),
        // What every executable shares: addresses, the readiness line, running until SIGTERM.
        .target(
            name: "ServiceRuntime",
            dependencies: [
                "ShoalRPC", "RequestContext", "ShoalTracing", .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "ServiceContextModule", package: "swift-service-context"),
                .product(name: "W3CTraceContext", package: "swift-w3c-trace-context"),
            ],
            swiftSettings: strictSettings
        ),
        .executableTarget(
            name: "harpoon",
            dependencies: [
                "Harpoon", "HarpoonAPI", "SQLiteSupport", "PostgresSupport", "ServiceRuntime",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/HarpoonServer",
            swiftSettings: strictSettings
        ),
        .executableTarget(
            name: "event-router",
            dependencies: [
                "EventRouter", "EventRouterAPI", "ServiceRuntime",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Sources/EventRouterServer",
            swiftSettings: strictSettings
        ),
        .executableTarget(
            name: "hypervisor",
            dependencies: [
                "HypervisorAgent", "EventRouterAPI", "ServiceRuntime",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Sources/HypervisorServer",
            swiftSettings: strictSettings
        ),
        // make bench-pipeline: the pipeline as processes under concurrent creations.
        .executableTarget(
            name: "pipeline-bench",
            dependencies: [
                "HarpoonAPI", "EventRouterAPI", "OTLPAPI", "ChildProcess", "LocalPostgres", "PostgresSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Sources/PipelineBench",
            swiftSettings: strictSettings
        ),
        // Event Router (one per region) and the simulated hypervisor agent.
        .target(
            name: "EventRouterAPI",
            dependencies: ["HarpoonAPI"],
            swiftSettings: strictSettings,
            plugins: ["ProtoGenPlugin"]
        ),
        .target(
            name: "EventRouter",
            dependencies: ["EventRouterAPI", "RequestContext", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strictSettings
        ),
        .target(
            name: "HypervisorAgent",
            dependencies: ["EventRouterAPI", "RequestContext", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strictSettings
        ),
        // The reserved-IP orchestrator: the API (generated only), the service library, the executable.
        .target(
            name: "ReservedIPAPI",
            dependencies: ["ShoalRPC", "ProtoWellKnownTypes"],
            swiftSettings: strictSettings,
            plugins: ["ProtoGenPlugin"]
        ),
        .target(
            name: "ReservedIP",
            dependencies: [
                "ReservedIPAPI", "HarpoonAPI", "SQLiteSupport", "PostgresSupport",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "PostgresNIO", package: "postgres-nio"), .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSettings
        ),
        .executableTarget(
            name: "reserved-ip",
            dependencies: [
                "ReservedIP", "SQLiteSupport", "PostgresSupport", "ServiceRuntime",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Sources/ReservedIPServer",
            swiftSettings: strictSettings
        ),
        // The aggregator: the customer HTTP API (DigitalOcean API v2 shapes) over Harpoon and the orchestrator.
        .target(
            name: "Aggregator",
            dependencies: [
                "ReservedIPAPI", "HarpoonAPI", "ServiceRuntime", "RequestContext",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"), .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceContextModule", package: "swift-service-context"),
                .product(name: "W3CTraceContext", package: "swift-w3c-trace-context"),
            ],
            swiftSettings: strictSettings
        ),
        .executableTarget(
            name: "aggregator",
            dependencies: [
                "Aggregator", "ServiceRuntime", "ShoalRPC", .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "NIOPosix", package: "swift-nio"), .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Sources/AggregatorServer",
            swiftSettings: strictSettings
        ),
        // make run: the whole cluster on 127.0.0.1, supervised; the API integration tests start it too.
        // Executables run as supervised child processes: the launcher, pipeline-bench and the multi-process tests.
        .target(name: "ChildProcess", swiftSettings: strictSettings),
        // A PostgreSQL server run by Shoal on 127.0.0.1: throwaway ones for the tests, a kept one for make run.
        .target(name: "LocalPostgres", dependencies: ["ChildProcess"], swiftSettings: strictSettings),
        .executableTarget(
            name: "shoal-local",
            dependencies: [
                "ChildProcess", "RPCCore", "LocalPostgres", "PostgresSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Sources/Launcher",
            swiftSettings: strictSettings
        ),
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
            dependencies: [
                "ProtoRuntime", "ProtoWellKnownTypes", "ConformanceMessages", "CProtobufCReference", "TestSupport",
            ],
            swiftSettings: strictSettings
        ),
        // What the test targets share: waiting on conditions, seeded randomness.
        .target(
            name: "TestSupport", dependencies: ["LocalPostgres", "PostgresSupport"], path: "Tests/TestSupport",
            swiftSettings: strictSettings),
        .testTarget(
            name: "RPCCoreTests",
            dependencies: ["RPCCore"],
            swiftSettings: strictSettings
        ),
        .target(
            name: "RPCTestServices",
            dependencies: ["ShoalRPC", "ProtoRuntime", "ProtoWellKnownTypes"],
            path: "Tests/RPCTestServices",
            swiftSettings: strictSettings,
            plugins: ["ProtoGenPlugin"]
        ),
        .testTarget(
            name: "ServiceRuntimeTests",
            dependencies: [
                "ServiceRuntime", "RequestContext", "ShoalRPC", "RPCTestServices", "TestSupport",
                .product(name: "Logging", package: "swift-log"), .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "ServiceContextModule", package: "swift-service-context"),
                .product(name: "W3CTraceContext", package: "swift-w3c-trace-context"),
            ],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "ShoalRPCTests",
            dependencies: [
                "ShoalRPC", "RPCCore", "RPCTestServices", "InteropService", "TestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "SchedulerTests",
            dependencies: [
                "Scheduler", "SchedulerAPI", "TestSupport", .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "HarpoonTests",
            dependencies: [
                "Harpoon", "HarpoonAPI", "Scheduler", "EventRouter", "EventRouterAPI", "HypervisorAgent", "TestSupport",
                "SQLiteSupport", "PostgresSupport", "LocalPostgres",
                .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
            ],
            swiftSettings: strictSettings
        ),
        // Multi-process: the built executables started as a cluster on 127.0.0.1.
        .testTarget(
            name: "IntegrationTests",
            dependencies: [
                "HarpoonAPI", "EventRouterAPI", "OTLPAPI", "TestSupport", "ChildProcess", "LocalPostgres",
                "PostgresSupport",
            ],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "ReservedIPTests",
            dependencies: [
                "ReservedIP", "ReservedIPAPI", "Harpoon", "HarpoonAPI", "Scheduler", "EventRouter", "EventRouterAPI",
                "HypervisorAgent",
                "Aggregator", "TestSupport", "PostgresSupport", "LocalPostgres",
            ],
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
