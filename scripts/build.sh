# Shared by ./xl, ./demo, ./test and ./bench/run: builds the product (Release) when stale.
xensharp_build_product() {
    stamp="$ROOT/artifacts/.product-stamp"
    if [ -f "$stamp" ] && [ -z "$(find "$ROOT/src" "$ROOT/policy" "$ROOT/Directory.Build.props" "$ROOT/Directory.Packages.props" \
            -newer "$stamp" \( -name '*.cs' -o -name '*.csproj' -o -name '*.props' -o -name '*.te' \) -print -quit)" ]; then
        return 0
    fi
    mkdir -p "$ROOT/artifacts"
    if ! out=$(dotnet build "$ROOT/XenSharp.Product.slnf" -c Release -v q --nologo -clp:ErrorsOnly 2>&1); then
        echo "$out"
        echo "xensharp: build failed" >&2
        return 1
    fi
    touch "$stamp"
}
