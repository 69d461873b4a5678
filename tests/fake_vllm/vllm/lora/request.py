"""``vllm/lora/request.py`` of 0.33.0 (a msgspec Struct there): id >= 1, a path, equality by name."""

from __future__ import annotations


class LoRARequest:
    def __init__(
        self, lora_name: str, lora_int_id: int, lora_path: str = "", base_model_name: str | None = None
    ) -> None:
        self.lora_name = lora_name
        self.lora_int_id = lora_int_id
        self.lora_path = lora_path
        self.base_model_name = base_model_name
        if self.lora_int_id < 1:
            raise ValueError(f"id must be > 0, got {self.lora_int_id}")
        assert self.lora_path, "lora_path cannot be empty"

    def __eq__(self, value: object) -> bool:
        return isinstance(value, self.__class__) and self.lora_name == value.lora_name

    def __hash__(self) -> int:
        return hash(self.lora_name)
