// reserved-ip: the reserved-IP orchestrator, sole owner of the reserved-IP database.
import ArgumentParser
import HarpoonAPI
import PostgresSupport
import ReservedIP
import SQLiteSupport
import ServiceRuntime

struct ReservedIPCommand: ServiceCommand {
    static let configuration = CommandConfiguration(
        commandName: "reserved-ip", abstract: "The reserved-IP orchestrator.")

    @Option(help: "Address to listen on.") var host = "127.0.0.1"
    @OptionGroup var runtime: RuntimeOptions
    @Option(help: "Port to listen on (0: any free port).") var port = 50080
    @Option(
        help:
            "The database: a SQLite file (created if missing), or postgres://user[:password]@host[:port]/database, shared by every replica."
    )
    var database = "reserved-ip.sqlite"
    @Option(help: "PostgreSQL: connections this replica opens at most.") var databaseConnections = 4
    @Option(
        help:
            "PostgreSQL: how long a replica's claim on an action it drives lasts unless renewed; a replica that dies has its actions taken over after this."
    )
    var driverLeaseSeconds = 30.0
    @Option(
        help:
            "When a commit is on disk: full (synced before it is acknowledged: survives a machine crash) or normal (synced at checkpoints: survives a process crash)."
    )
    var sqliteSynchronous = "full"
    @Option(help: "Harpoon, host:port (replicas: several, comma-separated).") var harpoon = "127.0.0.1:50050"
    @Option(help: "An address pool, region=a.b.c.d/n; repeat for more blocks or regions.") var pool: [String] = []

    func run() async throws {
        let pools: AddressPools
        do {
            pools = try AddressPools(parsing: pool)
        } catch {
            throw ValidationError(error.description)
        }
        if pools.blocks.isEmpty { throw ValidationError("give at least one --pool region=a.b.c.d/n") }
        guard let durability = SQLiteDurability(rawValue: sqliteSynchronous) else {
            throw ValidationError("--sqlite-synchronous is full or normal, not '\(sqliteSynchronous)'")
        }
        let harpoons = try harpoon.split(separator: ",").map { try ServiceRuntime.address(String($0)) }
        guard !harpoons.isEmpty else { throw ValidationError("--harpoon needs at least one host:port") }
        let harpoonClient = ServiceRuntime.serviceClient(harpoons)
        let store: any ReservedIPStore
        let postgres: PostgresReservedIPStore?
        if PostgresAddress.isPostgres(database) {
            guard driverLeaseSeconds > 0, databaseConnections >= 1 else {
                throw ValidationError("--driver-lease-seconds and --database-connections must be positive")
            }
            let opened = try await PostgresReservedIPStore.open(
                PostgresAddress(url: database), pools: pools, connections: databaseConnections)
            (store, postgres) = (opened, opened)
        } else {
            (store, postgres) = (try SQLiteReservedIPStore(path: database, pools: pools, durability: durability), nil)
        }
        let driver = TransitionDriver(store: store, harpoon: harpoonClient, claimSeconds: driverLeaseSeconds)
        let server = RPCServer(
            configuration: .init(host: host, port: port),
            services: [ReservedIPService(store: store, driver: driver, harpoon: harpoonClient)],
            interceptors: ServiceRuntime.serverInterceptors
        )
        let metrics = try await ServiceRuntime.startMetrics(port: runtime.metricsPort, host: host)
        try await server.start()
        try await driver.resume()
        ServiceRuntime.announce("reserved-ip ready on \(host):\(server.port ?? port)")
        var background: [@Sendable () async -> Void] = [{ await driver.watch() }]
        // Replicas: actions a replica that died was driving are taken over when its claims lapse.
        if postgres != nil {
            background.append { await driver.adoptOrphans() }
            background.append { await driver.adoptReleased() }
        }
        background.append(
            ServiceRuntime.gauges(every: runtime.metricsSampleSeconds, server: server) {
                do {
                    ServiceRuntime.gauge("reserved_ip_actions_in_progress", try await store.actionsInProgressCount())
                    ServiceRuntime.gauge("reserved_ip_database_connections", try await store.databaseConnections())
                } catch {
                    ServiceRuntime.complain("reserved-ip: the metrics sample could not read the database: \(error)")
                }
            })
        await ServiceRuntime.run(server: server, metrics: metrics, background: background)
        // Stopping (SIGTERM): the actions this replica drove go to the others now, not when its claims lapse.
        do {
            try await driver.stop()
        } catch {
            ServiceRuntime.complain(
                "reserved-ip: could not give the claims up (the other replicas take the actions when they lapse): \(error)"
            )
        }
        await postgres?.close()
    }
}

ServiceRuntime.runConcurrencyOnEventLoops()
await ServiceRuntime.main(ReservedIPCommand.self)
