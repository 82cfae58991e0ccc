"""A prior shared by a family (issue 20, `family.shared`): the members re-coded under one table
per tensor decode to exactly what their own files did, need the prior (checked by its sha256),
and the family is smaller than its members alone where their tables are a large part of them,
not where they are not."""

from __future__ import annotations

import pytest
import torch

from vaecompress.api import compress, decompress, decompress_file
from vaecompress.coding.entropy import Table, pooled_table, tables_from_bytes, tables_to_bytes
from vaecompress.errors import FormatError, UserError
from vaecompress.family.shared import share
from vaecompress.format import loads


def _family(n: int, tensors: int, size: int, change: float) -> tuple[dict, list[dict]]:
    g = torch.Generator().manual_seed(0)
    base = {f"t{i}": torch.randn(size, 16, generator=g) for i in range(tensors)}
    members = [{k: v + change * torch.randn(v.shape, generator=g) for k, v in base.items()}
               for _ in range(n)]
    return base, members


def test_members_under_the_shared_prior_decode_as_their_own_files() -> None:
    base, members = _family(4, 24, 8, 0.05)
    own = [compress(m, "vae-rd-free", base=base, snr=24.0) for m in members]
    fam = share([r.data for r in own])
    assert fam.prior and any(m != r.data for m, r in zip(fam.members, own, strict=True))
    for r, m in zip(own, fam.members, strict=True):
        out = decompress(m, {"prior": fam.prior}, base=base)
        assert out.keys() == r.rebuilt.keys()
        assert all(torch.equal(out[k], r.rebuilt[k]) for k in out)
    shared = next(m for m in fam.members if loads(m).externals)
    assert loads(shared).codec["version"] == 2
    with pytest.raises(UserError, match="give the family's prior file"):
        decompress(shared, base=base)
    bad = bytearray(fam.prior)
    bad[-1] ^= 1
    with pytest.raises(FormatError, match="does not match this file"):
        decompress(shared, {"prior": bytes(bad)}, base=base)


def test_sharing_pays_where_tables_are_much_of_the_files_and_not_elsewhere() -> None:
    """Eight members of many small tensors at a fine fidelity (wide alphabets: a table per
    tensor is much of each file): the family is smaller with the prior. One
    large tensor (its table a few bytes of many): nothing to gain, and the family costs at
    most the prior and the references to it more than its members alone."""
    base, members = _family(8, 24, 32, 0.05)
    fam = share([compress(m, "vae-rd-free", base=base, snr=40.0).data for m in members])
    assert fam.total_bytes < sum(fam.alone) and fam.saving > 0.05
    g = torch.Generator().manual_seed(1)
    big = [{"w": torch.randn(2048, 64, generator=g)} for _ in range(3)]
    fam = share([compress(m, "vae-rd-free", snr=30.0).data for m in big])
    assert fam.saving < 0.01
    assert fam.total_bytes <= sum(fam.alone) + len(fam.prior) + 3 * 120


def test_a_member_reads_its_prior_from_beside_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    base, members = _family(3, 24, 8, 0.05)
    fam = share([compress(m, "vae-rd-free", base=base, snr=24.0).data for m in members])
    k = next(i for i, m in enumerate(fam.members) if loads(m).externals)
    path = tmp_path / "m.vaec"
    path.write_bytes(fam.members[k])
    (tmp_path / "m.vaec.prior.safetensors").write_bytes(fam.prior)
    out = decompress_file(path, base=base)
    assert out.keys() == members[k].keys()


def test_a_family_is_of_rd_files_with_one_manifest() -> None:
    _, members = _family(2, 4, 8, 0.05)
    with pytest.raises(UserError, match="for vae-rd and vae-rd-free files"):
        share([compress(m, "int8").data for m in members])
    other = compress({"x": torch.randn(8, 16)}, "vae-rd-free").data
    with pytest.raises(UserError, match="same tensors"):
        share([compress(members[0], "vae-rd-free").data, other])
    with pytest.raises(UserError, match="two members or more"):
        share([other])


def test_the_prior_round_trips_and_hostile_tables_are_refused() -> None:
    tables: list[Table | None] = [pooled_table([torch.tensor([-3, 0, 0, 5]).numpy()]), None,
                                  pooled_table([torch.tensor([7]).numpy()])]
    back = tables_from_bytes(tables_to_bytes(tables), max_tables=3)
    assert back[1] is None
    for a, b in ((tables[0], back[0]), (tables[2], back[2])):
        assert a is not None and b is not None
        assert a.values.tolist() == b.values.tolist() and a.counts.tolist() == b.counts.tolist()
    blob = tables_to_bytes(tables)
    with pytest.raises(FormatError, match="more than"):
        tables_from_bytes(blob, max_tables=2)
    with pytest.raises(FormatError):
        tables_from_bytes(blob + b"\x00", max_tables=3)
    # values not increasing; a zero count; a table longer than the prior
    for bad in (b"\x01\x02\x02\x01\x01\x01", b"\x01\x02\x00\x02\x01\x00", b"\x01\xff\x7f"):
        with pytest.raises(FormatError):
            tables_from_bytes(bad, max_tables=1)


def test_the_share_command_writes_members_and_prior_and_refuses_bad_input(
        tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from safetensors.torch import load_file

    from vaecompress.cli import main
    from vaecompress.io import save_weights_file

    base, members = _family(8, 24, 32, 0.05)
    save_weights_file(tmp_path / "base.safetensors", base, {})
    files = []
    for i, m in enumerate(members):
        save_weights_file(tmp_path / f"ft{i}.safetensors", m, {})
        out = tmp_path / f"ft{i}.vaec"
        assert main(["compress", str(tmp_path / f"ft{i}.safetensors"), "-o", str(out),
                     "--base", str(tmp_path / "base.safetensors"), "--snr", "40",
                     "--quiet"]) == 0
        files.append(str(out))
    capsys.readouterr()
    fam = tmp_path / "fam"
    assert main(["share", *files, "-o", str(fam)]) == 0
    said = capsys.readouterr().out
    assert "family.prior" in said and "against" in said
    assert (fam / "family.prior").is_file()
    alone = sum((tmp_path / f"ft{i}.vaec").stat().st_size for i in range(8))
    assert sum(p.stat().st_size for p in fam.iterdir()) < alone
    back = tmp_path / "ft3.back.safetensors"
    assert main(["decompress", str(fam / "ft3.vaec"), "-o", str(back), "--base",
                 str(tmp_path / "base.safetensors"), "--external",
                 f"prior={fam / 'family.prior'}"]) == 0
    own = tmp_path / "ft3.own.safetensors"
    assert main(["decompress", files[3], "-o", str(own), "--base",
                 str(tmp_path / "base.safetensors")]) == 0
    a, b = load_file(back), load_file(own)
    assert all(torch.equal(a[k], b[k]) for k in a)
    capsys.readouterr()
    for argv in (["share", *files, "-o", str(fam)],  # exists
                 ["share", files[0], files[0], "-o", str(tmp_path / "x")],  # same names
                 ["share", files[0], str(tmp_path / "base.safetensors"), "-o",
                  str(tmp_path / "y")]):  # not a compressed file
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_a_stream_a_reader_would_refuse_is_not_written_under_the_table() -> None:
    """The coder starts from an empty state, where the table's first value costs nothing: a
    stream of it alone holds no words, more symbols than the reader's bound on symbols per
    byte allows. `encode_with` refuses it (the record keeps its own table) rather than write
    a member that cannot be read back."""
    from vaecompress.coding.entropy import decode_with, encode_with

    table = Table(torch.tensor([0, 1]).numpy(), torch.tensor([1, 1]).numpy())
    with pytest.raises(ValueError, match="more symbols than its bytes"):
        encode_with(torch.zeros(1000, dtype=torch.int64).numpy(), table)
    ok = torch.tensor([1, 0] * 500).numpy()
    assert decode_with(encode_with(ok, table), 1000, table).tolist() == ok.tolist()
