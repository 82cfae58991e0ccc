"""The preset dictionaries of the stored header's raw deflate (spec: docs/format.md).

Part of the file format: never change these bytes. Version 2 (and 3) use `HEADER_ZDICT`, the
skeleton every header shares, so that its keys cost a few bits instead of ~100 bytes.

Version 4 uses `HEADER_ZDICT_V4`: the same bytes, then what the headers this library writes
repeat from file to file: tensor names as transformers and torchvision spell them, the library's
meta keys, and for each codec registered at the time its settings at their defaults (as
`Codec.settings_json` spells them), its codec_state's keys and its payloads' entries as written
for a small MLP (numbers and hashes cut), the default codec last (nearest, so cheapest to point
back to). A header then costs deflate little more than what differs from them: a codec at its
default settings costs a few bytes instead of up to 200. The bytes were made once, from the
codecs of revision 93794bd, and do not follow the codecs' defaults when those change (a changed
default costs a few bytes more, nothing else); their sha256 is pinned in a test and in
docs/format.md.
"""

from __future__ import annotations

HEADER_ZDICT = (
    b'"role":"aux","role":"model","kind":"safetensors","kind":"raw-f32","kind":"bytes",'
    b'"dtype":"int64","dtype":"float16","dtype":"bfloat16",".running_mean",".running_var",'
    b'".num_batches_tracked",{"codec":{"name":"","settings":{},"version":1},"codec_state":{},'
    b'"externals":[],"format_version":2,"meta":{},"payloads":[{"kind":"","length":0,"name":"",'
    b'"role":"code","sha256":""}],"tensors":[{"dtype":"float32","name":".weight","shape":[]},'
    b'{"dtype":"float32","name":".bias","shape":[]}]}'
)

HEADER_ZDICT_V4 = HEADER_ZDICT + (
    b'"name":"model.layers.0.self_attn.q_proj.weight","name":"model.layers.0.self_attn.k_proj.we'
    b'ight","name":"model.layers.0.self_attn.v_proj.weight","name":"model.layers.0.self_attn.o_p'
    b'roj.weight","name":"model.layers.0.mlp.gate_proj.weight","name":"model.layers.0.mlp.up_pro'
    b'j.weight","name":"model.layers.0.mlp.down_proj.weight","name":"model.layers.0.input_layern'
    b'orm.weight","name":"model.layers.0.post_attention_layernorm.weight","name":"model.embed_to'
    b'kens.weight","name":"model.norm.weight","name":"lm_head.weight","name":"encoder.layer.0.at'
    b'tention.self.query.weight","name":"encoder.layer.0.attention.self.key.weight","name":"enco'
    b'der.layer.0.attention.self.value.weight","name":"encoder.layer.0.attention.output.dense.we'
    b'ight","name":"encoder.layer.0.attention.output.LayerNorm.weight","name":"encoder.layer.0.i'
    b'ntermediate.dense.weight","name":"encoder.layer.0.output.dense.weight","name":"encoder.lay'
    b'er.0.output.LayerNorm.weight","name":"embeddings.word_embeddings.weight","name":"embedding'
    b's.position_embeddings.weight","name":"embeddings.token_type_embeddings.weight","name":"emb'
    b'eddings.LayerNorm.weight","name":"embeddings.position_ids","name":"pooler.dense.weight","n'
    b'ame":"conv1.weight","name":"bn1.weight","name":"layer1.0.conv1.weight","name":"downsample.'
    b'0.weight","name":"features.0.weight","name":"classifier.weight","name":"fc.weight","name":'
    b'"net.0.weight","meta":{"vaecompress.folder":{},"vaecompress.order":[],"vaecompress.target"'
    b':{},"vaecompress.base":{"op":"sub","sha256":""},"vaecompress.decoded":{"sha256":""}},{"cod'
    b'ec":{"name":"zstd","settings":{"level":19},"version":1},"codec_state":{"raw_bytes":0},{"ki'
    b'nd":"zstd","length":0,"name":"weights","role":"code","sha256":""},{"codec":{"name":"int8",'
    b'"settings":{"bias_dtype":"float32","entropy":false,"granularity":"channel","scale_dtype":"'
    b'float32","scheme":"affine"},"version":1},"codec_state":{"bias":"float0","bits":0,"entropy"'
    b':false,"granularity":"channel","q":[],"scale":"float0","scheme":"affine"},{"kind":"packed"'
    b',"length":0,"name":"q","role":"code","sha256":""},{"kind":"raw-f32","length":0,"name":"sca'
    b'les","role":"code","sha256":""},{"kind":"raw-f32","length":0,"name":"floats","role":"code"'
    b',"sha256":""},{"codec":{"name":"int4","settings":{"bias_dtype":"float32","entropy":false,"'
    b'granularity":"channel","scale_dtype":"float32","scheme":"affine"},"version":1},"codec_stat'
    b'e":{"bias":"float0","bits":0,"entropy":false,"granularity":"channel","q":[],"scale":"float'
    b'0","scheme":"affine"},{"kind":"packed","length":0,"name":"q","role":"code","sha256":""},{"'
    b'kind":"raw-f32","length":0,"name":"scales","role":"code","sha256":""},{"kind":"raw-f32","l'
    b'ength":0,"name":"floats","role":"code","sha256":""},{"codec":{"name":"prune","settings":{"'
    b'finetune_epochs":1.0,"lr":0.001,"scope":"global","sparsity":0.9,"value_dtype":"float32","z'
    b'std":true,"zstd_level":19},"version":1},"codec_state":{"raw_bytes":0,"tensors":[["f",0],["'
    b'm",0],["f",0],["m",0],["f",0],["m",0],["f",0],["m",0],["f",0],["m",0]],"values":"float0","'
    b'zstd":true},{"kind":"zstd","length":0,"name":"sparse","role":"code","sha256":""},{"codec":'
    b'{"name":"kmeans","settings":{"bias_dtype":"float32","bits":5,"entropy":false,"finetune_epo'
    b'chs":0.0,"iters":30,"lr":0.0001,"scope":"tensor"},"version":1},"codec_state":{"bias":"floa'
    b't0","entropy":false,"global":false,"k":[],"seg":[]},{"kind":"raw-f32","length":0,"name":"c'
    b'odebooks","role":"code","sha256":""},{"kind":"packed","length":0,"name":"indices","role":"'
    b'code","sha256":""},{"kind":"raw-f32","length":0,"name":"floats","role":"code","sha256":""}'
    b',{"codec":{"name":"deep-compression","settings":{"bias_dtype":"float16","conv_bits":8,"fc_'
    b'bits":5,"kmeans_iters":30,"prune_epochs":3.0,"prune_lr":0.001,"prune_stages":3,"quant_epoc'
    b'hs":1.0,"quant_lr":0.0001,"scope":"layer","size_exponent":0.5,"sparsity":0.96},"version":1'
    b'},"codec_state":{"bias":"float0","t":[[],[],[],[],[]]},{"kind":"dc-streams","length":0,"na'
    b'me":"code","role":"code","sha256":""},{"codec":{"name":"nncodec","settings":{"approx_metho'
    b'd":"uniform","bitdepth":null,"nonweight_qp":-75,"opt_qp":false,"param_opt":true,"prune":0.'
    b'0,"prune_epochs":2.0,"prune_lr":0.001,"qp":-32,"qp_density":2,"row_skipping":true,"sparsit'
    b'y":0.0,"struct_spars_factor":0.0,"use_dq":true},"version":1},"codec_state":{},{"kind":"nnc'
    b'-bitstream","length":0,"name":"bitstream","role":"code","sha256":""},{"codec":{"name":"hqq'
    b'","settings":{"axis":1,"bits":4,"group_size":64,"keep_dtype":"float32","optimize":true,"ro'
    b'und_zero":null,"scale_dtype":"float16"},"version":1},"codec_state":{"axis":0,"bits":0,"gro'
    b'up_size":0,"keep":"float0","scale":"float0"},{"kind":"safetensors","length":0,"name":"hqq"'
    b',"role":"code","sha256":""},{"codec":{"name":"zipnn","settings":{"threads":1},"version":1}'
    b',"codec_state":{},{"kind":"zipnn","length":0,"name":"float32.0","role":"code","sha256":""}'
    b',{"codec":{"name":"vae-paper","settings":{"batch_size":64,"chunk_size":2048,"epochs":500,"'
    b'external_decoder":false,"hidden":[512],"latent":64,"lr":0.0003,"n_variants":100,"noise_fra'
    b'ction":0.5,"noise_kind":"gaussian","noise_scale":0.05,"normalize":"tensor","patience":30,"'
    b'sigma_x":0.05,"val_fraction":0.2},"version":1},"codec_state":{"chunking":{"chunk_size":0,"'
    b'n_chunks":0,"numel":0,"pad":0},"layout":[{"dtype":"float0","name":"net.0.bias","shape":[]}'
    b',{"dtype":"float0","name":"net.0.weight","shape":[]},{"dtype":"float0","name":"net.0.bias"'
    b',"shape":[]},{"dtype":"float0","name":"net.0.weight","shape":[]},{"dtype":"float0","name":'
    b'"net.0.bias","shape":[]},{"dtype":"float0","name":"net.0.weight","shape":[]},{"dtype":"flo'
    b'at0","name",{"kind":"raw-f32","length":0,"name":"latents","role":"code","sha256":""},{"kin'
    b'd":"safetensors","length":0,"name":"decoder","role":"model","sha256":""},{"codec":{"name":'
    b'"vae-rd","settings":{"components":3,"decoder":"tensor","entropy":true,"epochs":2.0,"gram_b'
    b'atches":16,"init_bins":4.0,"lam":7.0,"latents":"direct","learned_prior":true,"lr":0.1,"lr_'
    b'prior":0.01,"lr_step":0.01,"masks":true,"patience":3,"quant":"mixed","rate_sample":0.05,"r'
    b'ounding":"feedback","slope":1.0,"snr":0.0},"version":1},{"codec":{"name":"bitdelta","setti'
    b'ngs":{"bias_dtype":"float32","finetune_epochs":0.0,"lr":0.01,"scale_dtype":"float16"},"ver'
    b'sion":1},"codec_state":{"bias":"float0","scale":"float0"},{"kind":"packed-u1","length":0,"'
    b'name":"signs","role":"code","sha256":""},{"kind":"raw-f16","length":0,"name":"scales","rol'
    b'e":"code","sha256":""},{"kind":"raw-f32","length":0,"name":"floats","role":"code","sha256"'
    b':""},{"codec":{"name":"vae-rd-free","settings":{"change_snr":10.0,"components":3,"decoder"'
    b':"tensor","entropy":true,"init_bins":4.0,"lam":0.03,"latents":"direct","learned_prior":tru'
    b'e,"lr":0.1,"lr_prior":0.01,"lr_step":0.01,"masks":true,"quant":"mixed","rounding":"nearest'
    b'","size":0,"snr":30.0,"solver":"closed","steps":1500,"weighting":"auto"},"version":1},"cod'
    b'ec_state":{"scale":0,"snr_db":0,"weighting":"relative"},{"kind":"rd-latents","length":0,"n'
    b'ame":"latents","role":"code","sha256":""},"externals":[],"format_version":4,"meta":{"vaeco'
    b'mpress.decoded":{"sha256":""}},"payloads":[{"kind":"rd-latents","length":0,"name":"latents'
    b'","role":"code","sha256":""}],"tensors":[{"dtype":"float32","name":"","shape":[]}]}'
)

HEADER_ZDICT_V4_SHA256 = "8b919fb3fa67cb47faa7653aa1ed7c0925a74e7673608499673098382bf35ad1"


def header_zdict(version: int) -> bytes:
    """The preset dictionary of a stored header of format `version` (2 or more)."""
    return HEADER_ZDICT_V4 if version >= 4 else HEADER_ZDICT

