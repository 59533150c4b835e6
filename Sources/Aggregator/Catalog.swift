package import HarpoonAPI

/// A region customers can use.
package struct Region: Sendable, Hashable {
    package var slug: String
    package var name: String

    package init(slug: String, name: String) {
        self.slug = slug
        self.name = name
    }
}

/// A droplet size customers can choose.
package struct DropletSize: Sendable, Hashable {
    package var slug: String
    package var vcpus: UInt32
    package var memoryMB: UInt64
    package var diskGB: UInt64
    package var transferTB: Double
    package var priceMonthly: Double
    package var description: String

    package var schedulerSize: Scheduler_V2_Size {
        Scheduler_V2_Size(slug: slug, vcpus: vcpus, memoryMb: memoryMB, diskGb: diskGB)
    }
}

/// The regions and sizes the API offers (`/v2/regions`, `/v2/sizes`), and what droplets are checked against.
package struct Catalog: Sendable {
    package var regions: [Region]
    package var sizes: [DropletSize]

    /// Each region's and size's JSON, encoded once: they appear in nearly every response.
    private var encodedRegions: [String: [UInt8]] = [:]
    private var encodedSizes: [String: [UInt8]] = [:]

    package init(regions: [Region], sizes: [DropletSize] = Catalog.standardSizes) {
        self.regions = regions
        self.sizes = sizes
        for region in regions { encodedRegions[region.slug] = buildRegionJSON(region.slug).encoded() }
        for size in sizes { encodedSizes[size.slug] = buildSizeJSON(size).encoded() }
    }

    package static let standardSizes: [DropletSize] = [
        DropletSize(
            slug: "s-1vcpu-512mb-10gb", vcpus: 1, memoryMB: 512, diskGB: 10, transferTB: 0.5, priceMonthly: 4,
            description: "Basic"),
        DropletSize(
            slug: "s-1vcpu-1gb", vcpus: 1, memoryMB: 1024, diskGB: 25, transferTB: 1, priceMonthly: 6,
            description: "Basic"),
        DropletSize(
            slug: "s-1vcpu-2gb", vcpus: 1, memoryMB: 2048, diskGB: 50, transferTB: 2, priceMonthly: 12,
            description: "Basic"),
        DropletSize(
            slug: "s-2vcpu-2gb", vcpus: 2, memoryMB: 2048, diskGB: 60, transferTB: 3, priceMonthly: 18,
            description: "Basic"),
        DropletSize(
            slug: "s-2vcpu-4gb", vcpus: 2, memoryMB: 4096, diskGB: 80, transferTB: 4, priceMonthly: 24,
            description: "Basic"),
        DropletSize(
            slug: "s-4vcpu-8gb", vcpus: 4, memoryMB: 8192, diskGB: 160, transferTB: 5, priceMonthly: 48,
            description: "Basic"),
        DropletSize(
            slug: "s-8vcpu-16gb", vcpus: 8, memoryMB: 16384, diskGB: 320, transferTB: 6, priceMonthly: 96,
            description: "Basic"),
    ]

    package func region(_ slug: String) -> Region? { regions.first { $0.slug == slug } }
    package func size(_ slug: String) -> DropletSize? { sizes.first { $0.slug == slug } }

    func regionJSON(_ slug: String) -> JSON {
        encodedRegions[slug].map(JSON.raw) ?? buildRegionJSON(slug)
    }

    private func buildRegionJSON(_ slug: String) -> JSON {
        let region = region(slug) ?? Region(slug: slug, name: slug)
        return .object([
            ("name", .string(region.name)), ("slug", .string(region.slug)),
            ("features", .array(["backups", "ipv6", "metadata", "server_id", "install_agent"].map(JSON.string))),
            ("available", .bool(self.region(slug) != nil)), ("sizes", .array(sizes.map { .string($0.slug) })),
        ])
    }

    func sizeJSON(_ size: DropletSize) -> JSON {
        encodedSizes[size.slug].map(JSON.raw) ?? buildSizeJSON(size)
    }

    private func buildSizeJSON(_ size: DropletSize) -> JSON {
        .object([
            ("slug", .string(size.slug)), ("memory", .int(Int64(size.memoryMB))), ("vcpus", .int(Int64(size.vcpus))),
            ("disk", .int(Int64(size.diskGB))), ("transfer", .double(size.transferTB)),
            ("price_monthly", .double(size.priceMonthly)),
            ("price_hourly", .double((size.priceMonthly / 672 * 100_000).rounded() / 100_000)),
            ("regions", .array(regions.map { .string($0.slug) })), ("available", .bool(true)),
            ("description", .string(size.description)),
        ])
    }

    /// A size as the droplet object embeds it: from the catalog, or from what Harpoon recorded if it left the catalog.
    func sizeJSON(for size: Scheduler_V2_Size) -> JSON {
        if let encoded = encodedSizes[size.slug] { return .raw(encoded) }
        return sizeJSON(
            self.size(size.slug)
                ?? DropletSize(
                    slug: size.slug, vcpus: size.vcpus, memoryMB: size.memoryMb, diskGB: size.diskGb, transferTB: 0,
                    priceMonthly: 0, description: ""
                ))
    }
}
